"""H-Net with a fixed chunker: the same encoder, main network and decoder, the outer boundaries from a rule
(`hnet.chunking.fixed`: space-like bytes or BPE token starts), so that learned and fixed chunking can be
compared with everything else equal.

A saved model is the usual config.json + model.safetensors (the same keys as an H-Net) plus
chunker.json naming the rule. The BPE rule's sentencepiece model is copied beside it and chunker.json
lists its bytes per token id, so that the model loads with sentencepiece alone, without the data package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from hnet.chunking.fixed import FixedRouting
from hnet.config import HNetConfig
from hnet.models.hnet import HNetForCausalLM

CHUNKER_FILE = "chunker.json"
CHUNKER_TOKENIZER = "chunker_tokenizer.model"


def latin1_encoder(tokenizer_file: str | Path):
    """bytes -> ids of a sentencepiece model trained on bytes as latin-1 characters (as our BPE
    tokenizers are): the rule needs the ids only, not the rest of a tokenizer."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_file))
    return lambda data: np.asarray(sp.encode(data.decode("latin-1")), dtype=np.int64)


class HNetFixedForCausalLM(HNetForCausalLM):
    """rule 'bpe' starts a chunk at every token of the sentencepiece model `tokenizer_file`;
    token_bytes (vocab_size,): the raw bytes each of its ids stands for."""

    def __init__(self, config: HNetConfig, rule: str = "space", tokenizer_file=None, token_bytes=None,
                 device=None, dtype=None):
        if config.num_stages != 2:
            raise ValueError(f"a fixed chunker takes an H-Net with one chunking stage; arch_layout "
                             f"{config.arch_layout!r} has {config.num_stages - 1}")
        super().__init__(config, device=device, dtype=dtype)
        self.tokenizer_file = None if tokenizer_file is None else Path(tokenizer_file)
        encode = None if tokenizer_file is None else latin1_encoder(tokenizer_file)
        token_bytes = None if token_bytes is None else np.asarray(token_bytes, dtype=np.int64)
        self.backbone.routing_module = FixedRouting(config.d_model[0], rule, encode, token_bytes, device=device,
                                                    dtype=dtype)

    @property
    def routing(self) -> FixedRouting:
        return self.backbone.routing_module

    def forward(self, input_ids, cu_seqlens=None, mask=None, cache=None, logits_at=None):
        with self.routing.reading(input_ids):
            return super().forward(input_ids, cu_seqlens=cu_seqlens, mask=mask, cache=cache, logits_at=logits_at)

    def step(self, input_ids, cache, mask=None):
        with self.routing.reading(input_ids):
            return super().step(input_ids, cache, mask)

    def save_weights(self, directory: str | Path, weights: bool = True) -> None:
        super().save_weights(directory, weights)
        chunker = {"rule": self.routing.rule}
        if self.tokenizer_file is not None:
            shutil.copyfile(self.tokenizer_file, Path(directory) / CHUNKER_TOKENIZER)
            chunker.update(tokenizer=CHUNKER_TOKENIZER, token_bytes=self.routing.token_bytes.tolist())
        (Path(directory) / CHUNKER_FILE).write_text(json.dumps(chunker) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device=None, dtype=None):
        directory = Path(directory)
        if not (directory / CHUNKER_FILE).is_file():
            raise ValueError(f"{directory}: not a fixed-chunker model directory (no {CHUNKER_FILE})")
        chunker = json.loads((directory / CHUNKER_FILE).read_text())
        if "tokenizer" in chunker and "token_bytes" not in chunker:
            raise ValueError(f"{directory / CHUNKER_FILE}: saved before the 'bpe' rule listed its token_bytes; add "
                             f"them: the list BPETokenizer('{chunker['tokenizer']}').token_bytes() gives")
        tokenizer_file = directory / chunker["tokenizer"] if "tokenizer" in chunker else None
        return super().from_pretrained(directory, chunker["rule"], tokenizer_file, chunker.get("token_bytes"),
                                       device=device, dtype=dtype)
