"""Pack documents into fixed-length rows and serve them as batches.

The stream: every document preceded by BOS, back to back. Training shuffles the documents with seed
`seed + epoch` and runs epoch after epoch without a gap, so no token is dropped at an epoch's end and
row r is a pure function of (seed, r). Row r is stream[r * seq_len : r * seq_len + seq_len + 1]; its
inputs are row[:-1] and its labels row[1:], so consecutive rows overlap by one token.

A batch is a dict:
  input_ids   (B, seq_len) int64
  labels      (B, seq_len) int64, -100 where the label is a document's BOS (the last token of one
              document does not predict the start of the next) and, in validation, past the end
  cu_seqlens  (num_segments + 1,) int32 over the flattened (1, B * seq_len) inputs: every row start
              and every document start (its BOS) inside a row, strictly increasing from 0 to
              B * seq_len; None when packing="separator" (the model sees plain rows, BOS between
              documents)
Document starts come from the shards' offset index, never from searching for the BOS value, which
is an ordinary byte (254) in byte-level data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hnet.config import PACKINGS
from hnet.constants import IGNORE_INDEX
from hnet.data.shards import TokenSplit


class _Stream:
    """One pass over the documents of `split` in `order`, each preceded by BOS."""

    def __init__(self, split: TokenSplit, order: np.ndarray):
        self.split, self.order = split, order
        lengths = np.diff(split.doc_offsets)[order] + 1
        self.starts = np.concatenate([[0], np.cumsum(lengths)])  # stream position of each document's BOS
        self.bos = np.array([split.bos_id], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, pos: int, n: int) -> tuple[np.ndarray, list[int]]:
        """Up to n tokens from `pos`, and the indices among them where a document (its BOS) starts."""
        end = min(pos + n, len(self))
        pieces, doc_starts, filled = [], [], 0
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        while pos < end:
            seg_start = int(self.starts[i])
            lo, hi = pos - seg_start, min(int(self.starts[i + 1]), end) - seg_start  # 0 is the BOS
            if lo == 0:
                doc_starts.append(filled)
                pieces.append(self.bos)
            if hi > max(lo, 1):
                first = int(self.split.doc_offsets[self.order[i]]) - 1  # segment index k is token k - 1
                pieces.append(self.split.tokens[first + max(lo, 1):first + hi].astype(np.int64))
            filled += hi - lo
            pos, i = seg_start + hi, i + 1
        return np.concatenate(pieces), doc_starts


def _collate(rows: list[tuple[np.ndarray, list[int]]], seq_len: int, packing: str) -> dict:
    """Rows of up to seq_len + 1 tokens (shorter only at the end of validation) -> a batch dict."""
    input_ids = np.zeros((len(rows), seq_len), dtype=np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    boundaries = []
    for b, (tokens, doc_starts) in enumerate(rows):
        n = len(tokens) - 1  # positions that have a label
        input_ids[b, :n] = tokens[:n]
        labels[b, :n] = tokens[1:]
        labels[b, [s - 1 for s in doc_starts if s > 0]] = IGNORE_INDEX
        boundaries += [b * seq_len + s for s in sorted({0, *doc_starts}) if s < seq_len]
    boundaries.append(len(rows) * seq_len)
    cu_seqlens = torch.tensor(boundaries, dtype=torch.int32) if packing == "cu_seqlens" else None
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels), "cu_seqlens": cu_seqlens}


def _check(split: TokenSplit, seq_len: int, packing: str) -> None:
    if packing not in PACKINGS:
        raise ValueError(f"data.packing: unknown packing {packing!r}; expected one of {', '.join(PACKINGS)}")
    if seq_len <= 0:
        raise ValueError(f"data.seq_len: {seq_len} must be positive")
    if split.num_docs == 0:
        raise ValueError("the split holds no documents")


class TrainLoader:
    """Infinite, deterministic, resumable training batches; rank k of W gets rows [k*B/W, (k+1)*B/W)
    of every global batch of B rows, so the ranks together see exactly the one-process batch."""

    def __init__(self, data: TokenSplit, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, packing: str = "cu_seqlens"):
        _check(data, seq_len, packing)
        if batch_size % world_size:
            raise ValueError(f"train.batch_size: {batch_size} rows cannot be shared evenly by {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.data, self.seq_len, self.batch_size, self.seed = data, seq_len, batch_size, seed
        self.rank, self.world_size, self.packing = rank, world_size, packing
        self.rows_per_rank = batch_size // world_size
        self.epoch_len = data.num_tokens + data.num_docs  # stream tokens per epoch, BOS included
        self.step = 0  # global batches served so far: the whole position
        self._streams: dict[int, _Stream] = {}

    @property
    def epoch(self) -> int:
        return self.step * self.batch_size * self.seq_len // self.epoch_len

    def _stream(self, epoch: int) -> _Stream:
        if epoch not in self._streams:
            order = np.random.default_rng(self.seed + epoch).permutation(self.data.num_docs)
            # A row spans at most a few epochs, and reading only moves forward: keep the recent ones.
            self._streams = {e: s for e, s in self._streams.items() if e >= epoch - 1}
            self._streams[epoch] = _Stream(self.data, order)
        return self._streams[epoch]

    def _row(self, r: int) -> tuple[np.ndarray, list[int]]:
        pos, need = r * self.seq_len, self.seq_len + 1
        pieces, doc_starts = [], []
        while need:
            epoch, offset = divmod(pos, self.epoch_len)
            tokens, starts = self._stream(epoch).read(offset, need)
            doc_starts += [self.seq_len + 1 - need + s for s in starts]
            pieces.append(tokens)
            pos, need = pos + len(tokens), need - len(tokens)
        return np.concatenate(pieces), doc_starts

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        first = self.step * self.batch_size + self.rank * self.rows_per_rank
        rows = [self._row(r) for r in range(first, first + self.rows_per_rank)]
        self.step += 1
        return _collate(rows, self.seq_len, self.packing)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "seq_len": self.seq_len, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position. The world size may differ: positions count global batches."""
        for name in ("seed", "seq_len", "batch_size"):
            if state[name] != getattr(self, name):
                raise ValueError(f"loader state has {name}={state[name]!r} but this loader has {getattr(self, name)!r}")
        self.step = state["step"]


def val_batches(data: TokenSplit, seq_len: int, batch_size: int, max_batches: int | None = None,
                packing: str = "cu_seqlens") -> Iterator[dict]:
    """Validation batches in document order, unshuffled; every token of the split is a label exactly
    once (BOS excepted). The last row is padded with input 0 and label -100; the last batch may be short."""
    _check(data, seq_len, packing)
    stream = _Stream(data, np.arange(data.num_docs))
    num_rows = -(-(len(stream) - 1) // seq_len)
    num_batches = -(-num_rows // batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    for b in range(num_batches):
        rows = range(b * batch_size, min((b + 1) * batch_size, num_rows))
        yield _collate([stream.read(r * seq_len, seq_len + 1) for r in rows], seq_len, packing)
