"""H-Net with a fixed chunker: the same encoder, main network and decoder, the outer boundaries from a rule
(`hnet.chunking.fixed`: space-like bytes or BPE token starts), so that learned and fixed chunking can be
compared with everything else equal.

A saved model is the usual config.json + model.safetensors (the same keys as an H-Net) plus
chunker.json naming the rule; the BPE rule's sentencepiece model is copied beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


from hnet.chunking.fixed import FixedRouting
from hnet.config import HNetConfig
from hnet.models.hnet import HNetForCausalLM

CHUNKER_FILE = "chunker.json"
CHUNKER_TOKENIZER = "chunker_tokenizer.model"


class HNetFixedForCausalLM(HNetForCausalLM):
    def __init__(self, config: HNetConfig, rule: str = "space", tokenizer=None, device=None, dtype=None):
        if config.num_stages != 2:
            raise ValueError(f"a fixed chunker takes an H-Net with one chunking stage; arch_layout "
                             f"{config.arch_layout!r} has {config.num_stages - 1}")
        super().__init__(config, device=device, dtype=dtype)
        self.backbone.routing_module = FixedRouting(config.d_model[0], rule, tokenizer, device=device, dtype=dtype)

    @property
    def routing(self) -> FixedRouting:
        return self.backbone.routing_module

    def forward(self, input_ids, cu_seqlens=None, mask=None, cache=None):
        with self.routing.reading(input_ids):
            return super().forward(input_ids, cu_seqlens=cu_seqlens, mask=mask, cache=cache)

    def step(self, input_ids, cache, mask=None):
        with self.routing.reading(input_ids):
            return super().step(input_ids, cache, mask)

    def save_pretrained(self, directory: str | Path) -> None:
        super().save_pretrained(directory)
        chunker = {"rule": self.routing.rule}
        if self.routing.tokenizer is not None:
            shutil.copyfile(self.routing.tokenizer.path, Path(directory) / CHUNKER_TOKENIZER)
            chunker["tokenizer"] = CHUNKER_TOKENIZER
        (Path(directory) / CHUNKER_FILE).write_text(json.dumps(chunker) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device=None, dtype=None):
        from hnet.data.tokenizers import BPETokenizer

        directory = Path(directory)
        if not (directory / CHUNKER_FILE).is_file():
            raise ValueError(f"{directory}: not a fixed-chunker model directory (no {CHUNKER_FILE})")
        chunker = json.loads((directory / CHUNKER_FILE).read_text())
        tokenizer = BPETokenizer(directory / chunker["tokenizer"]) if "tokenizer" in chunker else None
        return super().from_pretrained(directory, chunker["rule"], tokenizer, device=device, dtype=dtype)
