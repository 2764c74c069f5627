from pathlib import Path

from hnet.models.fixed import CHUNKER_FILE, HNetFixedForCausalLM
from hnet.models.hnet import HNet, HNetForCausalLM, ModelOutput
from hnet.models.weights import load_checkpoint

__all__ = ["HNet", "HNetForCausalLM", "HNetFixedForCausalLM", "ModelOutput", "load_checkpoint", "load_model",
           "latest_checkpoint"]


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run directory (temporary, unfinished ones are ignored)."""
    steps = sorted(Path(run_dir, "checkpoints").glob("step_*[0-9]"))
    return steps[-1] if steps else None


def load_model(path, device=None, dtype=None):
    """A model from a run directory (its latest checkpoint), a checkpoint directory or a converted official
    model directory."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such run or model directory")
    if (path / "run.json").is_file() and not (path / "model.safetensors").is_file():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise ValueError(f"{path}: the run has no checkpoint yet")
        path = checkpoint
    cls = HNetFixedForCausalLM if (path / CHUNKER_FILE).is_file() else HNetForCausalLM
    return cls.from_pretrained(path, device=device, dtype=dtype)
