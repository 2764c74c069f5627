"""train.distributed "fsdp": 2 CPU processes (gloo) train what 1 trains, and sharded checkpoints move
between 2 and 1 processes, keep the previous checkpoint whole on a failed write, and load in readers."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from hnet.cli import main
from hnet.config import RunConfig
from hnet.models import checkpoint_problem, latest_checkpoint, load_model
from hnet.training import train
from tiny_runs import tiny_hnet

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "hnet" / "samples" / "tinyshakespeare.txt"
LOSS_TOLERANCE = 1e-4  # as the DDP comparison (test_multi_gpu.py): the same global batch, the same loss


def fsdp_config(tmp_path, **train) -> dict:
    train = dict(dict(max_steps=6, checkpoint_every=2, keep_checkpoints=3, eval_every=3, decay_fraction=0.0), **train)
    config = tiny_hnet(tmp_path, distributed="fsdp", **train)
    (tmp_path / "run.json").write_text(json.dumps(config))
    return config


def launch_two(config: Path, out: Path, *extra: str) -> None:
    """train.py in 2 gloo processes through accelerate, as `scripts/study.py --processes 2` starts it."""
    tmp = out.parent / f".tmp_{out.name}"  # torchelastic's folders go here, not to /tmp
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--num_processes", "2", str(REPO / "train.py"), str(config), "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp), PYTHONPATH=str(REPO))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    shutil.rmtree(tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def assert_same_weights(a: Path, b: Path) -> None:
    one, two = load_model(a).state_dict(), load_model(b).state_dict()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key


def shard_files(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in (checkpoint / "model").glob("*.distcp"))


@pytest.mark.slow
def test_two_fsdp_processes_match_one_and_a_checkpoint_moves_2_1_2(tmp_path, capsys):
    config = fsdp_config(tmp_path)
    train(RunConfig.from_dict(config), tmp_path / "p1", progress=False)
    launch_two(tmp_path / "run.json", tmp_path / "p2")

    one, two = losses(tmp_path / "p1"), losses(tmp_path / "p2")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    assert max(abs(one[s] - two[s]) for s in one) < LOSS_TOLERANCE, (one, two)
    first = json.loads((tmp_path / "p2" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["processes"] == 2

    last = latest_checkpoint(tmp_path / "p2")
    meta = dcp.FileSystemReader(last / "model").read_metadata()  # each process held its half of every tensor
    assert all(len(m.chunks) == 2 for m in meta.state_dict_metadata.values() if hasattr(m, "chunks"))
    assert shard_files(last) == ["__0_0.distcp", "__1_0.distcp"] and not (last / "model.safetensors").exists()
    recorded = json.loads((last / "state.json").read_text())["files"]
    assert {"config.json", "rng.pt", "model/.metadata", "model/__1_0.distcp", "optimizer/__1_0.distcp"} <= set(recorded)
    assert checkpoint_problem(last) is None
    assert_same_weights(tmp_path / "p1", tmp_path / "p2")  # readers put the shards together in one process
    (tmp_path / "eval.txt").write_bytes(SAMPLE.read_bytes()[-4000:])
    for argv in (["eval", str(tmp_path / "p2"), "--data", str(tmp_path / "eval.txt"), "--out", str(tmp_path / "eval.json")],
                 ["inspect", str(tmp_path / "p2"), "--text", "To be"]):
        assert main(argv) == 0, capsys.readouterr().err

    # Written by 2 processes at step 2, resumed in 1 to step 6 (writing steps 4 and 6 alone), that step 4
    # resumed in 2 again: the run ends where the uninterrupted 2-process run ends.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "p2", moved)
    for step in (4, 6):
        shutil.rmtree(moved / "checkpoints" / f"step_{step:06d}")
    train(RunConfig.from_dict(config), moved, resume=True, progress=False)
    assert shard_files(moved / "checkpoints" / "step_000004") == ["__0_0.distcp"]
    shutil.rmtree(moved / "checkpoints" / "step_000006")
    launch_two(tmp_path / "run.json", moved, "--resume")
    assert shard_files(latest_checkpoint(moved)) == ["__0_0.distcp", "__1_0.distcp"]
    assert_same_weights(tmp_path / "p2", moved)
    resumed = losses(moved)
    assert max(abs(resumed[s] - two[s]) for s in two) < LOSS_TOLERANCE

    # A damaged shard is named by readers, which fall back to nothing silently
    shard = latest_checkpoint(moved) / "model" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "model/__1_0.distcp has" in checkpoint_problem(latest_checkpoint(moved))
    with pytest.raises(ValueError, match="intact checkpoints: step_000002, step_000004"):
        load_model(moved)


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_exactly_and_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    """One process, train.distributed "fsdp": the sharded format round-trips model, optimizer, RNG and
    loader exactly; a write that fails for want of space names what and leaves the last checkpoint."""
    config = fsdp_config(tmp_path, max_steps=4, eval_every=4)
    train(RunConfig.from_dict(config), tmp_path / "straight", progress=False)

    real_save = dcp.save

    def full_disk(state, checkpoint_id=None, **kwargs):
        if "step_000004" in str(checkpoint_id) and str(checkpoint_id).endswith("optimizer"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, checkpoint_id=checkpoint_id, **kwargs)

    monkeypatch.setattr(dcp, "save", full_disk)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "run.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"no space left on device while writing {out / 'checkpoints' / 'step_000004' / 'optimizer'}; "
            f"the last complete checkpoint is step 2 ({out / 'checkpoints' / 'step_000002'})") in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]
    assert checkpoint_problem(out / "checkpoints" / "step_000002") is None
    monkeypatch.undo()

    assert main(["train", str(tmp_path / "run.json"), "--out", str(out), "--resume"]) == 0
    end, straight = load_model(out).state_dict(), load_model(tmp_path / "straight").state_dict()
    assert all(torch.equal(end[k], straight[k]) for k in straight)
    assert losses(out) == losses(tmp_path / "straight")


def test_a_sharded_checkpoint_restores_the_rng_states(tmp_path):
    from hnet import HNetConfig, HNetForCausalLM
    from hnet.training.checkpoint import load_checkpoint_state, save_sharded_checkpoint
    from tiny_runs import HNET_MODEL

    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict(HNET_MODEL))
    optimizer = torch.optim.AdamW(model.parameters())
    torch.manual_seed(123)
    path = save_sharded_checkpoint(tmp_path, 1, model, optimizer, {}, keep=1)
    expected = torch.rand(4)
    load_checkpoint_state(path, model, optimizer)
    assert torch.equal(torch.rand(4), expected)
