"""hnet-lm: tokenizer-free, byte-level H-Net language models."""

from hnet.config import HNetConfig, RunConfig
from hnet.models import HNetForCausalLM, load_checkpoint, load_model

__version__ = "0.1.0"
__all__ = ["HNetConfig", "RunConfig", "HNetForCausalLM", "load_checkpoint", "load_model"]
