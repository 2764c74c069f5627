"""Generation: packed prefill into per-row caches, decoding steps on the device (CUDA graphs on CUDA),
sampling, UTF-8 streaming."""

from __future__ import annotations

from hnet.generation.generate import BOS, Decoder, generate, stream, stream_ids
from hnet.generation.prefill import prefill
from hnet.generation.sampling import Sampling, sample
from hnet.generation.utf8 import Utf8Stream, show_bytes

__all__ = ["BOS", "Decoder", "generate", "stream", "stream_ids", "prefill", "Sampling", "sample", "Utf8Stream", "show_bytes"]
