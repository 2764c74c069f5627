import hashlib
import json
import re
from pathlib import Path

from hnet.models.fixed import CHUNKER_FILE, HNetFixedForCausalLM
from hnet.models.hnet import HNet, HNetForCausalLM, ModelOutput
from hnet.models.weights import has_weights, load_checkpoint

__all__ = ["HNet", "HNetForCausalLM", "HNetFixedForCausalLM", "ModelOutput", "load_checkpoint", "load_model",
           "load_from_dir", "latest_checkpoint", "checkpoints", "checkpoint_problem", "file_record", "model_dir",
           "hub_snapshot"]


READERS_SKIP = ("optimizer.pt", "optimizer")  # a model is read without its optimizer state (file or sharded folder)


def checkpoints(run_dir) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first (temporary, unfinished ones and ones
    being deleted are ignored: only a folder under its final name counts)."""
    return sorted(Path(run_dir, "checkpoints").glob("step_*[0-9]"))


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run directory."""
    steps = checkpoints(run_dir)
    return steps[-1] if steps else None


def file_record(path: Path) -> dict:
    """What state.json records of each file of a checkpoint, so that a reader can tell it is whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def checkpoint_problem(checkpoint: Path, skip: tuple[str, ...] = ()) -> str | None:
    """None if the checkpoint's files (but those in `skip`, a file or a folder's name) are those its
    state.json recorded, else what is wrong (naming the file). Checkpoints written before the record
    existed are taken as they are."""
    state = checkpoint / "state.json"
    if not state.is_file():
        return None
    try:
        files = json.loads(state.read_text()).get("files", {})
    except json.JSONDecodeError:
        return f"{state} is not valid JSON"
    for name, want in files.items():
        if name.split("/")[0] in skip:
            continue
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path} has {size} bytes, {want['size']} were written (truncated or changed)"
        if file_record(path)["sha256"] != want["sha256"]:
            return f"{path} does not match the hash recorded when it was written (corrupt or changed)"
    return None


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")  # owner/name


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a Hub model repo (downloaded, or found in the Hub's cache): a thin call of
    huggingface_hub.snapshot_download."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{repo_id}: no such run or model directory (a Hub repo id needs huggingface_hub: "
                         "pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo_id=repo_id))
    except Exception as e:  # no network, no such repo, no access: all the same to the user here
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{repo_id}: no such run or model directory, nor a Hub repo that could be downloaded "
                         f"({type(e).__name__}: {reason})") from None


def model_dir(path) -> Path:
    """The directory a model is read from: a run directory's latest checkpoint, verified against its
    state.json, else `path` itself (a checkpoint, a saved or converted model). A Hub repo id ("owner/name",
    where no such local path exists) is downloaded first."""
    path = Path(path)
    if not path.exists() and HUB_REPO_ID.fullmatch(str(path)):
        path = hub_snapshot(str(path))
    if not path.exists():
        raise ValueError(f"{path}: no such run or model directory")
    if (path / "run.json").is_file() and not has_weights(path):
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise ValueError(f"{path}: the run has no checkpoint yet")
        path = checkpoint
    problem = checkpoint_problem(path, skip=READERS_SKIP)
    if problem:
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        intact = [c.name for c in (checkpoints(run) if run else [])
                  if c != path and checkpoint_problem(c, skip=READERS_SKIP) is None]
        others = (f"intact checkpoints: {', '.join(intact)} (give one of them as the model path)" if intact
                  else "no intact checkpoint remains")
        raise ValueError(f"{problem}; {others}")
    return path


def load_model(path, device=None, dtype=None):
    """A model from a run directory (its latest checkpoint), a checkpoint directory, a folder written by
    `save_pretrained` (a converted official model, an exported run), or a Hub repo id of such a folder."""
    return load_from_dir(model_dir(path), device, dtype)


def load_from_dir(directory: Path, device=None, dtype=None):
    """The model saved in `directory` (a `model_dir`, already verified)."""
    cls = HNetFixedForCausalLM if (directory / CHUNKER_FILE).is_file() else HNetForCausalLM
    return cls.from_pretrained(directory, device=device, dtype=dtype)
