"""Tiny run configs (seconds to train on a CPU) for the evaluation and baseline tests. Each call returns a
fresh dict that a test may change."""

import copy
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SSM = {"chunk_size": 16, "d_conv": 4, "d_state": 8, "expand": 2}
HNET_MODEL = {"arch_layout": ["m1", ["T1"], "m1"], "d_model": [32, 64], "d_intermediate": [0, 128], "ssm_cfg": SSM,
              "attn_cfg": {"num_heads": [1, 2], "rotary_emb_dim": [16, 16], "window_size": [-1, -1]}}
TRANSFORMER_MODEL = {"arch_layout": ["T2"], "d_model": [64], "d_intermediate": [128],
                     "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}}


def tiny_hnet(tmp_path, **train) -> dict:
    return {
        "model": copy.deepcopy(HNET_MODEL),
        "data": {"path": "package:tinyshakespeare.txt", "split": "tail", "max_bytes": 40000, "seq_len": 128,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 4, "max_steps": 10, "lr": 3e-3, "eval_every": 5, "eval_batches": 2, "log_every": 1,
                  "checkpoint_every": 10, "ratio_targets": [4.0], **train},
    }


def tiny_transformer(tmp_path, **train) -> dict:
    config = tiny_hnet(tmp_path, **train)
    del config["train"]["ratio_targets"]
    return dict(config, model_type="isotropic", model=copy.deepcopy(TRANSFORMER_MODEL))


def tiny_fixed(tmp_path, rule="space", tokenizer_path=None, **train) -> dict:
    config = tiny_hnet(tmp_path, ratio_loss_weight=0.0, **train)
    del config["train"]["ratio_targets"]
    config.update(model_type="hnet_fixed", fixed_boundaries=rule)
    if tokenizer_path:
        config["fixed_tokenizer_path"] = str(tokenizer_path)
    return config


def load_benchmark(name: str):
    """A fresh module object of benchmarks/NAME.py (a script, not a package module), for a test to call
    and to monkeypatch on its own."""
    return load_script(name, "benchmarks")


def load_script(name: str, folder: str = "scripts"):
    """The same for FOLDER/NAME.py: scripts/ by default (the study, the preset writer)."""
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
