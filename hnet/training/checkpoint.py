"""Checkpoints in the run directory, written atomically: a crash mid-write never harms the last one.

RUN_DIR/checkpoints/step_000200/ holds config.json + model.safetensors (the `save_pretrained` format),
optimizer.pt and state.json (step, scheduler, loader position, RNG states). It is written under a
temporary name and renamed when complete; the newest `keep` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from hnet.models import latest_checkpoint

__all__ = ["save_checkpoint", "load_checkpoint_state", "latest_checkpoint", "rng_state", "set_rng_state"]


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
    checkpoints = Path(run_dir) / "checkpoints"
    final = checkpoints / f"step_{step:06d}"
    tmp = checkpoints / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=1))
    if final.exists():  # the same step written again (a resumed run): replace it whole
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(checkpoints.glob("step_*[0-9]"))[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint_state(path: Path, model, optimizer) -> dict:
    """Restore model weights, optimizer and RNG states in place; return state.json."""
    from safetensors.torch import load_file

    model.load_weights(load_file(str(path / "model.safetensors")), source=str(path))
    extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    set_rng_state(extra["rng"])
    return json.loads((path / "state.json").read_text())
