"""Checkpoints in the run directory, written atomically: a crash mid-write never harms the last one.

RUN_DIR/checkpoints/step_000200/ holds config.json + model.safetensors (`save_weights`: what loading needs),
optimizer.pt and state.json (step, scheduler, loader position, RNG states). It is written under a
temporary name and renamed when complete; the newest `keep` are kept. state.json, written last, records
each file's size and sha256, so a reader can tell a whole checkpoint from a damaged one. An old checkpoint
is renamed to .trash_step_... before it is deleted, so a deletion cut short never leaves a partial
checkpoint under a name that readers take.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from hnet.models import checkpoint_problem, checkpoints, file_record, latest_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint_state", "latest_checkpoint", "newest_intact_checkpoint",
           "rng_state", "set_rng_state", "CheckpointWriteError"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk); the previous one is intact."""


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_as_tensors(state):
    # Tensors and plain Python values only, so that `torch.load(weights_only=True)` reads the file back.
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int) -> Path:
    checkpoints_dir = Path(run_dir) / "checkpoints"
    final = checkpoints_dir / f"step_{step:06d}"
    tmp = checkpoints_dir / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    writing = tmp / "model.safetensors"
    try:
        model.save_weights(tmp)
        writing = tmp / "optimizer.pt"
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, writing)
        files = {p.name: file_record(p) for p in sorted(tmp.iterdir())}
        writing = tmp / "state.json"
        writing.write_text(json.dumps(dict(state, step=step, files=files), indent=1))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno != errno.ENOSPC:
            raise
        last = latest_checkpoint(run_dir)
        raise CheckpointWriteError(
            f"no space left on device while writing {final / writing.name}; the last complete checkpoint is "
            + (f"step {int(last.name.removeprefix('step_'))} ({last})" if last else "none: free space and start again")
        ) from None
    if final.exists():  # the same step written again (a resumed run): replace it whole
        _delete(final)
    tmp.rename(final)
    for old in checkpoints(run_dir)[:-keep]:
        _delete(old)
    for leftover in checkpoints_dir.glob(".trash_step_*"):  # a deletion an earlier process did not finish
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _delete(checkpoint: Path) -> None:
    """Out of the readers' sight first (one rename), then deleted."""
    trash = checkpoint.with_name(f".trash_{checkpoint.name}")
    shutil.rmtree(trash, ignore_errors=True)
    checkpoint.rename(trash)
    shutil.rmtree(trash)


def newest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files match their record, warning about each newer damaged one."""
    for checkpoint in reversed(checkpoints(run_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        print(f"warning: {problem}; skipping checkpoint {checkpoint.name} for an older one", file=sys.stderr)
    return None


def load_checkpoint_state(path: Path, model, optimizer) -> dict:
    """Restore model weights, optimizer and RNG states in place; return state.json."""
    from safetensors.torch import load_file

    model.load_weights(load_file(str(path / "model.safetensors")), source=str(path))
    extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    set_rng_state(extra["rng"])
    return json.loads((path / "state.json").read_text())
