"""Checkpoints in the run directory, written atomically: a crash mid-write never harms the last one.

RUN_DIR/checkpoints/step_000200/ holds config.json + model.safetensors (`save_weights`: what loading needs),
optimizer.pt and state.json (step, scheduler, loader position, RNG states). It is written under a
temporary name and renamed when complete; the newest `keep` are kept. state.json, written last, records
each file's size and sha256, so a reader can tell a whole checkpoint from a damaged one. An old checkpoint
is renamed to .trash_step_... before it is deleted, so a deletion cut short never leaves a partial
checkpoint under a name that readers take.

A run with `train.distributed: "fsdp"` writes its checkpoints sharded (`save_sharded_checkpoint`, which
every process calls): config.json, model/ and optimizer/ (torch.distributed.checkpoint folders: one file
per writing process and a .metadata index, keyed by parameter name), rng.pt (the main process's RNG
states) and state.json. The same temporary name, rename, record of every file and trash folder apply,
so the guarantees above hold for them too. Such a checkpoint loads on any number of processes, one
included (`load_checkpoint_state` reshards it), and readers (`hnet.load_model`) read model/ whole in one
process.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from hnet.models import checkpoint_problem, checkpoints, file_record, latest_checkpoint
from hnet.models.weights import ONE_PROCESS_WARNING

__all__ = ["save_checkpoint", "save_sharded_checkpoint", "load_checkpoint_state", "latest_checkpoint",
           "newest_intact_checkpoint", "rng_state", "set_rng_state", "CheckpointWriteError"]

SHARDED_MODEL, SHARDED_OPTIMIZER, RNG_FILE = "model", "optimizer", "rng.pt"


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
        raise _full_disk_error(run_dir, final / writing.name) from None
    return _put_in_place(run_dir, tmp, final, keep)


def _put_in_place(run_dir: Path, tmp: Path, final: Path, keep: int) -> Path:
    """The complete checkpoint `tmp` renamed to `final`, and the checkpoints past the newest `keep` deleted."""
    if final.exists():  # the same step written again (a resumed run): replace it whole
        _delete(final)
    tmp.rename(final)
    for old in checkpoints(run_dir)[:-keep]:
        _delete(old)
    for leftover in final.parent.glob(".trash_step_*"):  # a deletion an earlier process did not finish
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _full_disk_error(run_dir: Path, where: Path) -> CheckpointWriteError:
    last = latest_checkpoint(run_dir)
    return CheckpointWriteError(
        f"no space left on device while writing {where}; the last complete checkpoint is "
        + (f"step {int(last.name.removeprefix('step_'))} ({last})" if last else "none: free space and start again"))


def _out_of_space(error: BaseException) -> bool:
    """An OSError ENOSPC, or a torch.distributed.checkpoint failure caused by one on any process."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    causes = getattr(error, "failures", {}).values()  # CheckpointException: {rank: (exception, traceback)}
    return any(_out_of_space(c[0] if isinstance(c, tuple) else c) for c in causes)


@contextmanager
def _quiet_if_alone(distributed: bool):
    """On one process torch.distributed.checkpoint warns that it assumes one process: we ask it to."""
    with warnings.catch_warnings():
        if not distributed:
            warnings.filterwarnings("ignore", message=ONE_PROCESS_WARNING)
        yield


def save_sharded_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int) -> Path:
    """Every process calls this (it is collective when a process group is up): each writes its shards of
    the model and the optimizer state; the main process writes the rest, records every file and renames
    the checkpoint into place. A failure on any process fails it on all; the previous checkpoint stays."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    distributed = dist.is_available() and dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    final = Path(run_dir) / "checkpoints" / f"step_{step:06d}"
    tmp = final.with_name(f".tmp_{final.name}")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    writing = tmp / SHARDED_MODEL
    try:
        with _quiet_if_alone(distributed):
            dcp.save(get_model_state_dict(model), checkpoint_id=writing, no_dist=not distributed)
            writing = tmp / SHARDED_OPTIMIZER
            dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=writing, no_dist=not distributed)
    except (OSError, CheckpointException) as e:  # raised on every process alike
        if not main:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(e):
            raise _full_disk_error(run_dir, final / writing.name) from None
        raise
    problem = None
    if main:
        try:
            writing = tmp / "config.json"
            model.save_weights(tmp, weights=False)
            writing = tmp / RNG_FILE
            torch.save(rng_state(), writing)
            files = {str(p.relative_to(tmp)): file_record(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            writing = tmp / "state.json"
            writing.write_text(json.dumps(dict(state, step=step, files=files), indent=1))
            _put_in_place(run_dir, tmp, final, keep)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            problem = _full_disk_error(run_dir, final / writing.name) if e.errno == errno.ENOSPC else e
    if distributed:  # the others learn how it went, and wait until the checkpoint is in place
        outcome = [None if problem is None else str(problem)]
        dist.broadcast_object_list(outcome, src=0)
        if not main and outcome[0] is not None:
            raise CheckpointWriteError(f"the main process could not write the checkpoint: {outcome[0]}")
    if problem is not None:
        raise problem
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
    """Restore model weights, optimizer and RNG states in place; return state.json. A sharded checkpoint
    is read by every process (collectively when a process group is up), into a sharded model or a plain
    one, whatever number of processes wrote it."""
    if (path / SHARDED_MODEL).is_dir():
        return _load_sharded(path, model, optimizer)
    from safetensors.torch import load_file

    model.load_weights(load_file(str(path / "model.safetensors")), source=str(path))
    extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    set_rng_state(extra["rng"])
    return json.loads((path / "state.json").read_text())


def _load_sharded(path: Path, model, optimizer) -> dict:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    distributed = dist.is_available() and dist.is_initialized()
    with _quiet_if_alone(distributed):
        weights = get_model_state_dict(model)
        dcp.load(weights, checkpoint_id=path / SHARDED_MODEL, no_dist=not distributed)
        set_model_state_dict(model, weights)
        # The optimizer's state is made (a step of zero size) so that the checkpoint has tensors to load into.
        moments = get_optimizer_state_dict(model, optimizer)
        dcp.load(moments, checkpoint_id=path / SHARDED_OPTIMIZER, no_dist=not distributed)
        set_optimizer_state_dict(model, optimizer, moments)
    set_rng_state(torch.load(path / RNG_FILE, map_location="cpu", weights_only=True))
    return json.loads((path / "state.json").read_text())
