from pathlib import Path

from hnet.models.fixed import CHUNKER_FILE, HNetFixedForCausalLM
from hnet.models.hnet import HNet, HNetForCausalLM, ModelOutput
from hnet.models.weights import load_checkpoint

__all__ = ["HNet", "HNetForCausalLM", "HNetFixedForCausalLM", "ModelOutput", "load_checkpoint", "load_model",
           "latest_checkpoint", "model_for_run"]


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


def model_for_run(config):
    """The model a RunConfig describes: an H-Net, an isotropic baseline (over bytes or BPE ids; the same
    class with a flat layout) or an H-Net with a fixed chunker."""
    from hnet.data import BPETokenizer, resolve_path
    from hnet.data.tokenizers import model_file

    def tokenizer(field, value):
        path = model_file(resolve_path(value))
        if not path.is_file():
            raise ValueError(f"{field}: {path} is not a sentencepiece model file")
        return BPETokenizer(path)

    if config.data.tokenizer == "bpe" and config.data.tokenizer_path:
        tok = tokenizer("data.tokenizer_path", config.data.tokenizer_path)
        if config.model.vocab_size != tok.vocab_size:
            raise ValueError(f"field 'model.vocab_size' has value {config.model.vocab_size}; the tokenizer {tok.path} "
                             f"(data.tokenizer_path) has {tok.vocab_size} ids")
    if config.model_type == "hnet_fixed":
        rule = config.fixed_boundaries
        rule_tokenizer = tokenizer("fixed_tokenizer_path", config.fixed_tokenizer_path) if rule == "bpe" else None
        return HNetFixedForCausalLM(config.model, rule, rule_tokenizer)
    return HNetForCausalLM(config.model)
