"""Fixed chunk boundaries: a rule over the input bytes in place of the routing module's decisions.

space (SpaceByte's rule, Slagle 2024). A byte is space-like unless it is an ASCII letter or digit
[A-Za-z0-9] or a UTF-8 continuation byte [0x80-0xBF]: spaces, punctuation, control bytes, BOS (254) and
the lead byte of every multi-byte character are space-like. A chunk begins at the first space-like byte
of every run of them, and at the first position of every sequence. In H-Net a chunk that begins at
position t is read by the main network through byte t and serves the predictions from t on, so the
main network runs just after each word and predicts the first byte of the next one: where SpaceByte
puts its global blocks. "hello, world" -> "hello" ", world"; each CJK character is a chunk of its own.
The decision at t reads bytes t-1 and t only, so the rule is causal and runs in cached decoding.

bpe. A chunk begins at the first byte of every token of a sentencepiece model's tokenization of each
sequence (each packed sequence is tokenized alone). Our BPE tokens carry their leading space
(" world"), so on plain words this is the space rule's placement. The rule is not causal: whether a
token starts at t can depend on bytes after t, which the model may exploit a little; it cannot run in
cached decoding.

every N. A chunk begins at positions 0, N, 2N, ... of each sequence: the compression a router trained to
target N reaches, without training one. It is no `fixed_boundaries` rule of a run config: `route_every`
puts it in place of each stage's router (the benchmarks time a step at the target compressions with it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from hnet.chunking.routing import RoutingCache, RoutingModule, RoutingOutput, routing_output
from hnet.config import FIXED_RULES
from hnet.ops.cache import cache_zeros, update_rows_
from hnet.ops.packed import continued_sequences, positions_in_sequence



def is_space_like(ids: torch.Tensor) -> torch.Tensor:
    letter_or_digit = ((ids >= 48) & (ids <= 57)) | ((ids >= 65) & (ids <= 90)) | ((ids >= 97) & (ids <= 122))
    continuation = (ids >= 0x80) & (ids <= 0xBF)
    return ~(letter_or_digit | continuation)


def _sequence_starts(shape, cu_seqlens, device) -> torch.Tensor:
    """(B, L) bool: the first position of every row, and every packed sequence start."""
    starts = torch.zeros(shape, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if cu_seqlens is not None:
        starts.index_fill_(1, cu_seqlens[:-1].long(), True)  # not starts[:, idx] = True: a host copy, a sync
    return starts


def space_boundaries(ids: torch.Tensor, cu_seqlens=None) -> torch.Tensor:
    """ids (B, L) bytes, or (1, T) packed -> (B, L) bool: the first space-like byte of every run."""
    space = is_space_like(ids)
    after_space = torch.nn.functional.pad(space[:, :-1], (1, 0), value=False)
    return (space & ~after_space) | _sequence_starts(ids.shape, cu_seqlens, ids.device)


def token_start_boundaries(ids: torch.Tensor, encode, token_bytes, cu_seqlens=None) -> torch.Tensor:
    """ids (B, L) bytes, or (1, T) packed -> (B, L) bool: the first byte of every token.

    encode: bytes -> token ids (an array); token_bytes: (vocab_size,) raw bytes per id, so that the
    token lengths of a sequence sum to its length (a BPE tokenizer's `encode` and `token_bytes()`).
    """
    lengths = np.asarray(token_bytes)
    rows = ids.detach().cpu().numpy().astype(np.uint8)
    out = np.zeros(rows.shape, dtype=bool)
    cuts = [0, rows.shape[1]] if cu_seqlens is None else cu_seqlens.tolist()
    for r, row in enumerate(rows):
        for start, end in zip(cuts[:-1], cuts[1:]):
            token_lengths = lengths[encode(row[start:end].tobytes())]
            offsets = np.cumsum(token_lengths) - token_lengths
            out[r, start + offsets[token_lengths > 0]] = True
    return torch.from_numpy(out).to(ids.device) | _sequence_starts(ids.shape, cu_seqlens, ids.device)


def every_nth_boundaries(shape, every: int, cu_seqlens=None, device=None) -> torch.Tensor:
    """(B, L) bool: positions 0, N, 2N, ... of every row, or of every packed sequence of a (1, T) row."""
    length = shape[1]
    pos = torch.arange(length, device=device) if cu_seqlens is None else positions_in_sequence(cu_seqlens, length)
    return (pos % every == 0).expand(shape)


@dataclass
class FixedRoutingCache(RoutingCache):
    last_space_like: torch.Tensor = None  # (B,) bool: was the row's previous byte space-like


class FixedRouting(RoutingModule):
    """The routing module with its boundaries from a rule. p is still computed: it weights the dechunk
    EMA, and the STE passes the gradient to the probability of the side the rule chose.

    The rule reads the input ids, which the stage does not pass down: the model hands them over around
    each call with `reading(input_ids)`. The parameters are the routing module's, under the same names.
    The 'bpe' rule takes `encode` and `token_bytes` as `token_start_boundaries` does.
    """

    def __init__(self, d_model: int, rule: str = "space", encode=None, token_bytes=None, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if rule not in FIXED_RULES:
            raise ValueError(f"fixed_boundaries: unknown rule {rule!r}; expected one of {', '.join(FIXED_RULES)}")
        if rule == "bpe" and (encode is None or token_bytes is None):
            raise ValueError("fixed_boundaries 'bpe' needs a tokenizer's encode and token_bytes")
        self.rule, self.encode, self.token_bytes = rule, encode, token_bytes
        self.input_ids = None

    @contextmanager
    def reading(self, input_ids):
        self.input_ids = input_ids
        try:
            yield
        finally:
            self.input_ids = None

    def boundaries(self, ids, cu_seqlens=None) -> torch.Tensor:
        if self.rule == "space":
            return space_boundaries(ids, cu_seqlens)
        return token_start_boundaries(ids, self.encode, self.token_bytes, cu_seqlens)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> FixedRoutingCache:
        cache = super().allocate_inference_cache(batch_size, max_seqlen, dtype)
        return FixedRoutingCache(cache.last_hidden, cache.has_seen_tokens,
                                 cache_zeros(batch_size, dtype=torch.bool, device=cache.last_hidden.device))

    def forward(self, h, cu_seqlens=None, mask=None, cache=None) -> RoutingOutput:
        """With a cache (prefill, packed), sequence i continues row i: under the space rule its first byte
        begins a chunk if it is space-like after a row's last byte that was not (or if the row is new)."""
        seen = None if cache is None else cache.has_seen_tokens.clone()  # before the parent marks the rows
        learned = super().forward(h, cu_seqlens, mask, cache)
        ids = self._ids(h.shape[:2])
        boundaries = self.boundaries(ids, cu_seqlens)
        if cache is not None:
            rows, first, last = continued_sequences(cu_seqlens)
            if self.rule != "space" and bool(seen[rows].any()):
                raise ValueError(f"fixed_boundaries '{self.rule}' needs the whole text: it cannot continue a cache")
            space = is_space_like(ids[0, first])
            starts = ~seen[rows] | (space & ~cache.last_space_like[rows])
            boundaries = boundaries.index_put((torch.zeros_like(first), first), starts)
            cache.last_space_like.index_copy_(0, rows, is_space_like(ids[0, last]))
        return _decided(learned.boundary_prob, boundaries, mask)

    def step(self, h, cache: FixedRoutingCache, mask=None) -> RoutingOutput:
        if self.rule != "space":
            raise ValueError(f"fixed_boundaries '{self.rule}' needs the whole text: it cannot decode byte by byte")
        first = ~cache.has_seen_tokens  # read before the parent's step marks the row as seen
        learned = super().step(h, cache, mask)
        space = is_space_like(self._ids(h.shape[:1]))
        boundary = first | (space & ~cache.last_space_like)
        update_rows_(cache.last_space_like, space, mask)
        return _decided(learned.boundary_prob, boundary, mask)

    def _ids(self, shape) -> torch.Tensor:
        if self.input_ids is None or tuple(self.input_ids.shape) != tuple(shape):
            raise RuntimeError("FixedRouting needs the input ids: call it inside `reading(input_ids)`")
        return self.input_ids


def _decided(boundary_prob, boundary, mask=None) -> RoutingOutput:
    """The routing output for boundaries chosen by the rule; `selected_probs` is the chosen side's p."""
    if mask is not None:
        boundary = boundary & mask
    selected = boundary_prob.gather(-1, boundary.long().unsqueeze(-1))
    return RoutingOutput(boundary_prob, boundary, selected)


class EveryNthRouting(RoutingModule):
    """The routing module with a boundary every N-th position of each sequence. The router still runs:
    p takes the rule's value (0 or 1, so the dechunk EMA sees hard boundaries) and passes its gradient
    straight through to the learned p, so that a training step costs what a trained router's does at
    compression N. Training and prefill only: no decoding step.
    """

    def __init__(self, d_model: int, every: int, device=None, dtype=None):
        super().__init__(d_model, device=device, dtype=dtype)
        if every < 1:
            raise ValueError(f"a boundary every {every} positions: expected at least 1")
        self.every = every

    @classmethod
    def replacing(cls, router: RoutingModule, every: int) -> EveryNthRouting:
        """In place of `router`, with its very projections: the same parameters, under the same names."""
        w = router.q_proj_layer.weight
        routing = cls(w.shape[1], every, device=w.device, dtype=w.dtype)
        routing.q_proj_layer, routing.k_proj_layer = router.q_proj_layer, router.k_proj_layer
        return routing

    def forward(self, h, cu_seqlens=None, mask=None, cache=None) -> RoutingOutput:
        p = super().forward(h, cu_seqlens, mask, cache).boundary_prob[..., 1]
        fixed = every_nth_boundaries(p.shape, self.every, cu_seqlens, p.device).to(p.dtype)
        return routing_output(fixed + (p - p.detach()), mask)  # the rule's value, the learned p's gradient

    def step(self, h, cache: RoutingCache, mask=None) -> RoutingOutput:
        raise ValueError("a boundary every N positions is for training steps: it does not decode byte by byte")


def route_every(model, every) -> None:
    """Route each chunking stage s of `model` at one boundary every round(every[s]) positions of each
    sequence (`EveryNthRouting`, which keeps the stage's router parameters), e.g. at its ratio targets."""
    # the model's chunking stages: the modules that hold a router (chunking knows no model classes)
    stages = [m for m in model.modules() if isinstance(getattr(m, "routing_module", None), RoutingModule)]
    for stage in stages:
        stage.routing_module = EveryNthRouting.replacing(stage.routing_module, round(every[stage.stage]))
