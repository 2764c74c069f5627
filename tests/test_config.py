"""Config files: the official format round-trips unchanged, and every error names field, value and file."""

import json
from pathlib import Path

import pytest

from hnet.config import HNetConfig, RunConfig, apply_overrides

OFFICIAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "configs"
TINY = {
    "arch_layout": ["m2", ["T2"], "m2"],
    "d_model": [64, 128],
    "d_intermediate": [0, 256],
    "vocab_size": 256,
    "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2},
    "attn_cfg": {"num_heads": [2, 4], "rotary_emb_dim": [16, 16], "window_size": [-1, -1]},
    "tie_embeddings": False,
}


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="../shared/reference is not beside the repo")
@pytest.mark.parametrize("path", sorted(OFFICIAL.glob("*.json")), ids=lambda p: p.stem)
def test_official_configs_round_trip_unchanged(path, tmp_path):
    config = HNetConfig.from_json(path)
    assert config.to_dict() == json.loads(path.read_text())
    config.to_json(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(path.read_text())


def write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def with_change(**changes):
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return data


BAD = {
    "unknown-field": (dict(TINY, colour="blue"), "colour", "blue"),
    "unknown-nested-field": (with_change(ssm_cfg__headdim2=32), "ssm_cfg.headdim2", "32"),
    "layout-letter": (with_change(arch_layout=["m2", ["X2"], "m2"]), "arch_layout", "X2"),
    "layout-no-count": (with_change(arch_layout=["m", ["T2"], "m2"]), "arch_layout", "'m'"),
    "layout-length-2": (with_change(arch_layout=["m2", ["T2"]]), "arch_layout", "T2"),
    "stage-count": (with_change(d_model=[64, 128, 256]), "d_model", "[64, 128, 256]"),
    "stage-count-heads": (with_change(attn_cfg__num_heads=[2]), "attn_cfg.num_heads", "[2]"),
    "head-size": (with_change(attn_cfg__num_heads=[2, 3]), "d_model", "[64, 128]"),
    "mamba-head-size": (with_change(d_model=[48, 128]), "d_model", "[48, 128]"),
    "wrong-type": (with_change(vocab_size="256"), "vocab_size", "'256'"),
    "zero-layers": (with_change(arch_layout=["m0", ["T2"], "m2"]), "arch_layout", "'m0'"),
    "zero-layers-inner": (with_change(arch_layout=["m2", ["T1m0"], "m2"]), "arch_layout", "'T1m0'"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_model_config_names_field_value_and_file(case, tmp_path):
    data, field, value = case
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as err:
        HNetConfig.from_json(path)
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message and value in message


def test_run_config_errors_and_overrides(tmp_path):
    run = {"model": TINY, "data": {"path": "x.txt", "packing": "zip"}}
    path = write(tmp_path, run)
    with pytest.raises(ValueError, match=r"bad\.json.*'data\.packing'.*'zip'"):
        RunConfig.from_json(path)
    run["data"]["packing"] = "cu_seqlens"
    run["train"] = {"ratio_targets": [6.0, 2.0]}
    with pytest.raises(ValueError, match=r"'train\.ratio_targets'.*\[6\.0, 2\.0\]"):
        RunConfig.from_json(write(tmp_path, run))
    data = apply_overrides(run, ["train.ratio_targets=[5]", "train.lr=0.001", "data.path=other.txt"])
    config = RunConfig.from_dict(data)
    assert config.train.ratio_targets == [5] and config.train.lr == 0.001 and config.data.path == "other.txt"
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(run, ["train.lr"])


ROUTING_RECIPE_BAD = {
    "weight list of the wrong length": ({"ratio_loss_weight": [0.03, 0.03]}, "ratio_loss_weight", "[0.03, 0.03]"),
    "negative weight": ({"ratio_loss_weight": -0.1}, "ratio_loss_weight", "-0.1"),
    "weight of the wrong type": ({"ratio_loss_weight": "high"}, "ratio_loss_weight", "'high'"),
    "negative ratio warmup": ({"ratio_loss_warmup_steps": -5}, "ratio_loss_warmup_steps", "-5"),
    "negative router warmup": ({"router_warmup_steps": -1}, "router_warmup_steps", "-1"),
    "router lr multiplier 0": ({"router_lr_multiplier": 0.0}, "router_lr_multiplier", "0.0"),
    "band without the target": ({"ratio_loss_bands": [[2.0, 5.0]]}, "ratio_loss_bands", "[[2.0, 5.0]]"),
    "band of one number": ({"ratio_loss_bands": [[4.0]]}, "ratio_loss_bands", "[[4.0]]"),
    "bands for two stages": ({"ratio_loss_bands": [None, [4.0, 8.0]]}, "ratio_loss_bands", "[None, [4.0, 8.0]]"),
    "band below 1": ({"ratio_loss_bands": [[0.5, 8.0]]}, "ratio_loss_bands", "[[0.5, 8.0]]"),
}


NUMBERS_BAD = {
    "negative lr": ({"lr": -0.001}, "lr", "-0.001"),
    "zero lr": ({"lr": 0.0}, "lr", "0.0"),
    "NaN lr": ({"lr": float("nan")}, "lr", "nan"),
    "infinite weight decay": ({"weight_decay": float("inf")}, "weight_decay", "inf"),
    "NaN in a list": ({"ratio_loss_weight": [float("nan")]}, "ratio_loss_weight", "[nan]"),
    "beta of 1": ({"betas": [0.9, 1.0]}, "betas", "[0.9, 1.0]"),
    "warmup over 1": ({"warmup_fraction": 1.5}, "warmup_fraction", "1.5"),
    "warmup and decay over 1": ({"warmup_fraction": 0.6, "decay_fraction": 0.6}, "decay_fraction", "0.6"),
    "negative grad clip": ({"grad_clip": -1.0}, "grad_clip", "-1.0"),
    "zero eval batches": ({"eval_batches": 0}, "eval_batches", "0"),
    "zero lr multiplier": ({"lr_multipliers": [1.0, 0.0]}, "lr_multipliers", "[1.0, 0.0]"),
    "unknown distributed": ({"distributed": "zero3"}, "distributed", "'zero3'; expected one of ddp, fsdp"),
    "distributed not a string": ({"distributed": 2}, "distributed", "2"),
}


TRAIN_BAD = {**ROUTING_RECIPE_BAD, **NUMBERS_BAD}


@pytest.mark.parametrize("case", TRAIN_BAD.values(), ids=TRAIN_BAD.keys())
def test_bad_train_fields_name_field_value_and_file(case, tmp_path):
    train, field, value = case
    path = write(tmp_path, {"model": TINY, "data": {"path": "x.txt"}, "train": {"ratio_targets": [6.0], **train}})
    with pytest.raises(ValueError) as err:
        RunConfig.from_json(path)
    message = str(err.value)
    assert str(path) in message and f"'train.{field}'" in message and value in message


def test_a_negative_lr_is_refused_before_anything_is_written(tmp_path, capsys):
    from hnet.cli import main

    path = write(tmp_path, {"model": TINY, "data": {"path": "x.txt"}, "train": {"ratio_targets": [6.0]}})
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "train.lr=-1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'train.lr' has value -0.001; must be positive" in err
    assert not (tmp_path / "run").exists()


def test_good_routing_recipe_loads():
    train = {"ratio_loss_weight": [0.05], "ratio_loss_bands": [[4.0, 8.0]], "ratio_loss_warmup_steps": 100,
             "router_lr_multiplier": 0.5, "router_warmup_steps": 50}
    config = RunConfig.from_dict({"model": TINY, "train": train})
    assert config.train.ratio_loss_bands == [[4.0, 8.0]] and config.train.ratio_loss_weight == [0.05]
