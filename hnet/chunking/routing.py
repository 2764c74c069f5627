"""The routing module: a chunk begins where adjacent positions disagree.

p_t = (1 - cos(W_q h_{t-1}, W_k h_t)) / 2, p = 1 at the first position of every sequence, and a boundary
wherever p > 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hnet.ops.cache import cache_zeros, keep_last_, update_rows_
from hnet.ops.dispatch import rowwise_cosine


@dataclass
class RoutingOutput:
    boundary_prob: torch.Tensor  # (B, L, 2): [1 - p, p]
    boundary_mask: torch.Tensor  # (B, L) bool, already ANDed with the valid mask
    selected_probs: torch.Tensor  # (B, L, 1): probability of the chosen side, max(p, 1 - p)


@dataclass
class RoutingCache:
    last_hidden: torch.Tensor  # (B, D): the encoder output at the row's previous position
    has_seen_tokens: torch.Tensor  # (B,) bool: False before the row's first position (whose p is 1)
    # Set for one prefill by `hnet.generation.prefill.mark_empty`: whether no row has seen a position (then the
    # stage's routing and dechunk are the forward's); None: not known, the general path.
    empty: bool | None = field(default=None, kw_only=True)

    def holds_nothing(self) -> torch.Tensor:
        return ~self.has_seen_tokens.any()


def routing_output(p, mask=None) -> RoutingOutput:
    """Boundary decisions from p (B, L), or (B,) in a decoding step; ties (p == 0.5) are not boundaries,
    as in the official argmax."""
    boundary_prob = torch.stack((1 - p, p), dim=-1)
    selected = boundary_prob.argmax(dim=-1)
    boundary_mask = selected == 1
    if mask is not None:
        boundary_mask = boundary_mask & mask
    return RoutingOutput(boundary_prob, boundary_mask, boundary_prob.gather(-1, selected.unsqueeze(-1)))


class _Neighbours(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.shape = h.shape
        ctx.set_materialize_grads(False)
        return h[:, :-1], h[:, 1:]

    @staticmethod
    def backward(ctx, d_previous, d_current):
        grad = d_previous.new_empty(ctx.shape) if d_previous is not None else d_current.new_empty(ctx.shape)
        if d_previous is None:
            grad[:, :1].zero_()
            grad[:, 1:].copy_(d_current)
            return grad
        grad[:, :-1].copy_(d_previous)
        grad[:, -1:].zero_()
        if d_current is not None:
            grad[:, 1:] += d_current
        return grad


def neighbours(h):
    """(h[:, :-1], h[:, 1:]), views, each position's predecessor and itself: the same gradient as the two
    slices, summed into one buffer (each slice's backward would zero-fill a gradient of h's size, copy into
    it, and the two be added)."""
    return _Neighbours.apply(h)


class RoutingModule(nn.Module):
    def __init__(self, d_model: int, device=None, dtype=None):
        super().__init__()
        self.q_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.k_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self):
        # Identity init: at the start p measures how much the encoder output itself changes.
        with torch.no_grad():
            self.q_proj_layer.weight.copy_(torch.eye(self.q_proj_layer.in_features))
            self.k_proj_layer.weight.copy_(torch.eye(self.k_proj_layer.in_features))

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> RoutingCache:
        w = self.q_proj_layer.weight
        return RoutingCache(
            cache_zeros(batch_size, w.shape[1], device=w.device, dtype=dtype or w.dtype),
            cache_zeros(batch_size, dtype=torch.bool, device=w.device),
        )

    def forward(self, h, cu_seqlens=None, mask=None, cache=None) -> RoutingOutput:
        """h (B, L, D) padded, or (1, T, D) packed with cu_seqlens.

        With a cache (prefill, packed): sequence i continues row i of the cache. Its first p compares its
        first position with the row's last one (p = 1 if the row has none), and the row keeps its last
        position for the next call."""
        previous, current = neighbours(h)
        cos = rowwise_cosine(self.q_proj_layer(previous), self.k_proj_layer(current))
        p = F.pad(torch.clamp((1 - cos) / 2, min=0.0, max=1.0), (1, 0), value=1.0)
        if cu_seqlens is not None and cu_seqlens.shape[0] > 2:  # (a single sequence's p = 1 is set)
            # One slot past the end, for empty sequences there (a prefill); no host copy.
            starts = F.pad(torch.zeros_like(p, dtype=torch.bool), (0, 1)).index_fill_(1, cu_seqlens[:-1].long(), True)
            p = p.masked_fill(starts[:, :-1], 1.0)
        if cache is not None:
            if cu_seqlens is None:
                raise ValueError("a routing prefill takes packed sequences (cu_seqlens), one per row of the cache")
            # No host sync: every row's p after its cached position is computed; an empty sequence's goes
            # to a slot past the end, dropped, and leaves its row of the cache as it is. (T > 0: the
            # callers run a stage only on positions.)
            cu, T = cu_seqlens.long(), h.shape[1]
            live = cu[1:] > cu[:-1]
            empty, cache.empty = cache.empty, None  # known for this prefill only
            if not empty:  # (a fresh row's first p is 1, as set above)
                first = torch.where(live, cu[:-1], T)
                p_first = self._p_after(cache, h[0, cu[:-1].clamp(max=T - 1)])
                p = F.pad(p, (0, 1)).index_put((torch.zeros_like(first), first), p_first)[:, :T]
            keep_last_(cache.last_hidden, h, cu)
            cache.has_seen_tokens |= live
        return routing_output(p, mask)

    def step(self, h, cache: RoutingCache, mask=None) -> RoutingOutput:
        """One position: h (B, D). p compares it with the row's previous position (p = 1 at a row's first);
        rows where mask (B,) is False keep their cache and get no boundary."""
        p = self._p_after(cache, h)
        update_rows_(cache.last_hidden, h, mask)
        update_rows_(cache.has_seen_tokens, torch.ones_like(cache.has_seen_tokens), mask)
        return routing_output(p, mask)

    def _p_after(self, cache: RoutingCache, h):
        """p of positions h (B, D), one a row, each after its row's cached last position (p = 1 after none)."""
        q = F.normalize(self.q_proj_layer(cache.last_hidden), dim=-1)
        cos = (q * F.normalize(self.k_proj_layer(h), dim=-1)).sum(-1)
        return torch.where(cache.has_seen_tokens, torch.clamp((1 - cos) / 2, min=0.0, max=1.0), 1.0)
