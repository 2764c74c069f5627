"""Generation: inference caches driven one byte at a time, sampling, UTF-8 streaming, `hnet generate`."""

from __future__ import annotations

import sys

import torch

from hnet.generation.generate import BOS, generate, stream
from hnet.generation.sampling import sample
from hnet.generation.utf8 import Utf8Stream
from hnet.models import load_model

__all__ = ["BOS", "generate", "stream", "sample", "Utf8Stream", "generate_from_cli"]


def generate_from_cli(args) -> None:
    """`hnet generate MODEL_OR_RUN --prompt STR ...`: the continuation, streamed to stdout as it comes."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device).eval()
    text = Utf8Stream()
    for new in stream(model, [args.prompt.encode()], args.max_new_bytes, args.temperature, args.top_k,
                      args.top_p, seed=args.seed):
        sys.stdout.write(text.feed(new[0]))
        sys.stdout.flush()
    sys.stdout.write(text.flush() + "\n")
