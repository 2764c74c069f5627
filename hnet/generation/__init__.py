"""Generation: inference caches driven one byte at a time, sampling, UTF-8 streaming."""

from __future__ import annotations

from hnet.generation.generate import BOS, generate, stream, stream_ids
from hnet.generation.sampling import sample
from hnet.generation.utf8 import Utf8Stream, show_bytes

__all__ = ["BOS", "generate", "stream", "stream_ids", "sample", "Utf8Stream", "show_bytes"]
