"""One decoding step with no host round trip: the model steps every row, the next bytes are chosen, written
down and checked against the stop sequences, all on the device. The host reads the new bytes back only
every few steps.

`decode_step(model, state, sampling)` is the whole step, a function of `DecodeState`'s tensors, which
it reads and writes in place. Run eagerly it is the reference path (CPU, HNET_REFERENCE=1,
cuda_graphs=False); `hnet.generation.graphs` captures this very function as a CUDA graph over the same
tensors. A row that has stopped is masked out of the model's step, so its cache stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hnet.generation.sampling import Sampling

NOTHING = -1  # in `out`: no byte (the row had stopped); in `recent`: before the row's first byte
ANY = -2  # in `stops`: left of a shorter stop sequence, where any byte matches


@dataclass
class DecodeState:
    """Everything one step reads and writes, on the model's device, shaped for `rows` rows (a batch-size
    bucket: rows past the real ones are never live)."""

    cache: object  # the model's inference cache, `rows` rows
    last: torch.Tensor  # (rows,) int64: each row's latest byte, fed at the next step
    live: torch.Tensor  # (rows,) bool: rows still generating
    out: torch.Tensor  # (rows, capacity) int64: byte j chosen at step j, NOTHING once the row stopped
    count: torch.Tensor  # (1,) int64: steps so far (the next column of out)
    recent: torch.Tensor  # (rows, S) int64: each row's last S bytes (S: the longest stop; at least 1)
    stops: torch.Tensor  # (n_stops, S) int64: each stop right-aligned, ANY to its left (n_stops may be 0)
    forced: torch.Tensor | None = None  # (rows, capacity) int64: bytes to take instead of sampling

    @classmethod
    def allocate(cls, cache, rows: int, capacity: int, stop_width: int, device) -> DecodeState:
        long = {"dtype": torch.long, "device": device}
        return cls(cache, torch.zeros(rows, **long), torch.zeros(rows, dtype=torch.bool, device=device),
                   torch.full((rows, capacity), NOTHING, **long), torch.zeros(1, **long),
                   torch.full((rows, stop_width), NOTHING, **long), torch.empty(0, stop_width, **long))

    def start(self, live: int, stops: list[bytes], forced=None) -> None:
        """A new run: the first `live` rows generate, nothing chosen yet. Tensors of an unchanged shape are
        written in place, as a CUDA graph captured over them reads them there."""
        self.live.zero_()[:live] = True
        self.out.fill_(NOTHING)
        self.count.zero_()
        self.recent.fill_(NOTHING)
        self.stops = _in_place(self.stops, stop_table(stops, self.recent.shape[1], self.out.device))
        if forced is None:
            self.forced = None
        else:
            padded = torch.full_like(self.out, NOTHING)
            forced = forced[:, : padded.shape[1]]
            padded[: forced.shape[0], : forced.shape[1]] = forced
            self.forced = _in_place(self.forced, padded)

    @property
    def signature(self) -> tuple:
        """What a step captured over these tensors depends on besides their values."""
        return (self.live.shape[0], self.out.shape[1], tuple(self.stops.shape), self.forced is not None)


def _in_place(old, new):
    if old is not None and old.shape == new.shape:
        return old.copy_(new)
    return new


def stop_table(stops: list[bytes], width: int, device) -> torch.Tensor:
    table = torch.full((len(stops), width), ANY, dtype=torch.long)
    for i, s in enumerate(stops):
        table[i, width - len(s):] = torch.tensor(list(s))
    return table.to(device)


def emit(state: DecodeState, logits, sampling: Sampling, generator=None) -> None:
    """Choose every live row's next byte from logits (rows, vocab), write it down, and stop the rows whose
    bytes now end with a stop sequence (the stop is kept; the row is masked from then on)."""
    if state.forced is None:
        chosen = sampling(logits, generator)
    else:
        chosen = state.forced.index_select(1, state.count).squeeze(1)
    new = torch.where(state.live, chosen, NOTHING)
    state.out.index_copy_(1, state.count, new[:, None])
    state.recent.copy_(torch.cat([state.recent[:, 1:], new[:, None]], dim=1))
    if state.stops.shape[0] > 0:
        fits = (state.recent[:, None, :] == state.stops[None]) | (state.stops[None] == ANY)  # (rows, n_stops, S)
        state.live.logical_and_(~fits.all(-1).any(-1))
    state.last.copy_(chosen)
    state.count.add_(1)


def decode_step(model, state: DecodeState, sampling: Sampling, generator=None) -> None:
    """Feed every live row its latest byte and choose the next one (rows that stopped are masked out)."""
    logits = model.step(state.last, state.cache, mask=state.live).logits
    emit(state, logits, sampling, generator)
