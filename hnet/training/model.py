"""The model a run config describes, with the checks that need its tokenizers."""

from __future__ import annotations

from hnet.config import RunConfig
from hnet.models import HNetFixedForCausalLM, HNetForCausalLM


def model_for_run(config: RunConfig):
    """An H-Net, an isotropic baseline (over bytes or BPE ids; the same class with a flat layout) or an
    H-Net with a fixed chunker, whose BPE rule gets its tokenizer's encoding and bytes per id."""
    from hnet.data import BPETokenizer, resolve_path  # here, as in the loop: `import hnet.training` stays light
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
        if config.fixed_boundaries != "bpe":
            return HNetFixedForCausalLM(config.model, config.fixed_boundaries)
        tok = tokenizer("fixed_tokenizer_path", config.fixed_tokenizer_path)
        return HNetFixedForCausalLM(config.model, "bpe", tok.path, tok.token_bytes())
    return HNetForCausalLM(config.model)
