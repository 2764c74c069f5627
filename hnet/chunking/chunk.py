"""Chunk (keep the boundary positions), dechunk (EMA back to every byte) and the straight-through estimator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hnet.ops.cache import keep_last_, update_rows_
from hnet.ops.dispatch import ema_scan
from hnet.ops.ema import ema_scan_official_bf16
from hnet.ops.packed import seq_idx_from_cu_seqlens, sequence_of_position, unpack

DECHUNK_P_MIN = 1e-4  # the official dechunk clamps p to [1e-4, 1 - 1e-4] (and only there)


def chunk(h, boundary_mask, cu_seqlens=None):
    """Keep the hidden states at boundaries, in order. Returns (z, next_cu_seqlens, next_mask, longest).

    Packed (1, T, D) + cu_seqlens: z is (1, T', D), next_cu_seqlens marks each sequence's chunks and
    longest is the most chunks of one sequence (an int, for the attention over them).
    Padded (B, L, D): z is (B, M, D), M the largest chunk count, with next_mask (B, M) of real chunks.
    """
    if cu_seqlens is not None:
        b = boundary_mask[0]
        next_cu = F.pad(torch.cumsum(b, 0), (1, 0))[cu_seqlens.long()]  # empty sequences (a prefill) too
        # The one host sync of a stage: the chunk count sizes z, the longest sequence the attention.
        total, longest = torch.stack((next_cu[-1], (next_cu[1:] - next_cu[:-1]).max())).tolist()
        # index_select, not h[:, b]: its backward (index_add) needs no second count of the mask.
        return h.index_select(1, torch.nonzero_static(b, size=total).squeeze(1)), next_cu, None, longest
    counts = boundary_mask.sum(-1)
    order = _boundaries_first(boundary_mask)[:, : int(counts.max())]
    z = torch.gather(h, 1, order[..., None].expand(-1, -1, h.shape[-1]))
    next_mask = torch.arange(order.shape[1], device=h.device)[None, :] < counts[:, None]
    return z, None, next_mask, None


def _boundaries_first(boundary_mask):
    """Per row, the positions of boundaries in order, then the others (a stable partition)."""
    L = boundary_mask.shape[-1]
    key = torch.arange(L, device=boundary_mask.device)[None, :] + (~boundary_mask).long() * L
    return torch.argsort(key, dim=-1)


def _dechunk_p(boundary_prob):
    return boundary_prob[..., 1].float().clamp(min=DECHUNK_P_MIN, max=1 - DECHUNK_P_MIN)


def dechunk(z, boundary_mask, boundary_prob, next_cu_seqlens=None, official_bf16: bool = False, cache=None,
            cu_seqlens=None, longest: int | None = None, fresh: bool = False):
    """EMA over the chunk outputs z weighted by their boundary probability, then back to byte positions.

    Byte t receives the EMA at the latest boundary at or before t. z is (B, M, D) padded or (1, T', D)
    packed (then next_cu_seqlens resets the EMA per sequence). Returns (B, L, D) float32.

    With a DechunkCache (prefill, packed with cu_seqlens): sequence i continues row i, its EMA going on
    from the row's last value, which its bytes before its first boundary receive; the row's last value
    becomes the one at the sequence's last byte. longest: the most chunks of one sequence (`chunk`'s), which
    saves that path a host sync. fresh: no row of the cache has seen a position (every sequence begins with
    a boundary of p = 1 and nothing to carry on): the forward's dechunk, and the rows' last values kept.
    """
    p = _dechunk_p(boundary_prob)
    if next_cu_seqlens is not None:  # z's length is the boundary count: no host sync to find them again
        p_chunks = p[0, torch.nonzero_static(boundary_mask[0], size=z.shape[1]).squeeze(1)].unsqueeze(0)
        one_sequence = next_cu_seqlens.shape[0] == 2  # nothing to reset
        seq_idx = None if one_sequence else seq_idx_from_cu_seqlens(next_cu_seqlens, z.shape[1])
    else:
        p_chunks = torch.gather(p, 1, _boundaries_first(boundary_mask)[:, : z.shape[1]])
        seq_idx = None
    scan = ema_scan_official_bf16 if official_bf16 else ema_scan
    ema = scan(z, p_chunks, seq_idx=seq_idx) if z.shape[1] > 0 else z.float()  # no chunk: only in a prefill
    chunk_of_byte = torch.cumsum(boundary_mask, dim=-1) - 1
    if cache is not None and not fresh:
        return _continue_ema(ema[0], p_chunks[0], chunk_of_byte[0], cu_seqlens.long(), next_cu_seqlens, cache,
                             longest)
    out = torch.gather(ema, 1, chunk_of_byte.clamp(min=0)[..., None].expand(-1, -1, ema.shape[-1]))
    if cache is not None:
        keep_last_(cache.last_value, out, cu_seqlens)
    return out


def _continue_ema(ema, p_chunks, chunk_of_byte, cu, next_cu, cache, longest):
    """ema (M, D) of packed chunk sequences from a zero start -> bytes (1, T, D) of the EMA carried on from
    each row's last value: e_c + prod_{c' <= c} (1 - p_c') e_last, the product over the sequence's chunks."""
    last = cache.last_value
    M, T = ema.shape[0], chunk_of_byte.shape[0]
    if M > 0:
        keep, valid = unpack(1 - p_chunks, next_cu, longest)  # (s, most chunks): per sequence
        ema = ema + torch.cumprod(keep, dim=1)[valid][:, None] * last[sequence_of_position(next_cu, M)]
    seq = sequence_of_position(cu, T)
    before_first = chunk_of_byte < next_cu[seq]  # no boundary of its own sequence yet
    out = last[seq] if M == 0 else torch.where(before_first[:, None], last[seq], ema[chunk_of_byte.clamp(min=0)])
    update_rows_(last, out[(cu[1:] - 1).clamp(min=0)], cu[1:] > cu[:-1])  # an empty sequence: its row stays
    return out[None]


@dataclass
class DechunkCache:
    last_value: torch.Tensor  # (B, D) float32: the EMA at the row's latest boundary


def dechunk_step(z, boundary_mask, boundary_prob, cache: DechunkCache):
    """One position: where a boundary falls (boundary_mask (B,)), e = p z + (1 - p) e_prev with z (B, D)
    the main network's output; elsewhere e stays. Computed in fp32, as the official step does whatever
    the dechunk's dtype. Returns e (B, D) float32; the prefill stores e at each row's last byte."""
    p = _dechunk_p(boundary_prob)[:, None]
    update_rows_(cache.last_value, p * z.float() + (1 - p) * cache.last_value, boundary_mask)
    return cache.last_value


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.ones_like(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def ste(selected_probs):
    """Exactly 1 in the forward; passes the gradient to the selected probability unchanged."""
    return _STE.apply(selected_probs)


class _PlugBack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dechunked, selected_probs, residual):
        ctx.save_for_backward(dechunked)
        return dechunked + residual

    @staticmethod
    def backward(ctx, grad):
        (dechunked,) = ctx.saved_tensors
        return grad, (grad * dechunked).sum(-1, keepdim=True), grad


def plug_back(dechunked, selected_probs, residual):
    """dechunked * ste(selected_probs) + residual, the decoder's input, with the STE's forward value folded in:
    the same numbers both ways, without the ones tensor, the product with it and that product's backward (a
    fill and two passes over the byte-level float32 activations each way)."""
    return _PlugBack.apply(dechunked, selected_probs, residual)
