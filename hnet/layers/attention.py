"""Causal multi-head attention with partial rotary embeddings and an optional sliding window."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hnet.ops.dispatch import reference_requested, rotary_qkv
from hnet.ops.rotary import apply_rotary, rotary_tables
from hnet.ops.packed import positions_in_sequence, unpack

try:  # flash attention over packed sequences, CUDA only (torch >= 2.10; a window from 2.11)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None
_VARLEN_WINDOW = varlen_attn is not None and "window_size" in inspect.signature(varlen_attn).parameters


@dataclass
class KVCache:
    """Keys (rotated) and values of the positions a query may still attend to.

    With a sliding window w the cache is a ring of w + 1 slots (position t in slot t mod (w + 1)): it
    holds exactly the window, for any length. Without one it has a slot per position up to `max_seqlen`.
    """

    k: torch.Tensor  # (B, H, slots, head_dim)
    v: torch.Tensor  # (B, H, slots, head_dim)
    seqlen: torch.Tensor  # (B,) int64: positions cached so far (the next position's index)


class CausalSelfAttention(nn.Module):
    """Query i attends keys j with i - window <= j <= i (window -1: every j <= i)."""

    def __init__(self, d_model: int, num_heads: int, rotary_emb_dim: int = 0, window_size: int = -1, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.rotary_emb_dim = rotary_emb_dim
        self.window_size = window_size
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False, device=device, dtype=dtype)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> KVCache:
        w = self.Wqkv.weight
        slots = max_seqlen if self.window_size < 0 else self.window_size + 1
        shape = (batch_size, self.num_heads, slots, self.head_dim)
        kw = {"device": w.device, "dtype": dtype or w.dtype}
        seqlen = torch.zeros(batch_size, dtype=torch.long, device=w.device)
        return KVCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw), seqlen)

    def forward(self, x, cu_seqlens=None, cache=None, max_seqlen=None):
        """x (B, L, D); or packed (1, T, D) with cu_seqlens, every sequence attending only to itself
        (max_seqlen: the longest, if known, saves a host sync).

        With a cache (and no cu_seqlens), the L positions of every row are written into it (prefill).
        """
        if cu_seqlens is not None:
            if self._takes_varlen(x):
                return self._forward_varlen(x, cu_seqlens, max_seqlen)
            # Reference: right-padded rows, as many as sequences, each as long as the longest.
            rows, valid = unpack(x[0], cu_seqlens, max_seqlen)
            return self.forward(rows)[valid].unsqueeze(0)
        B, L, _ = x.shape
        q, k, v = self.Wqkv(x).view(B, L, 3, self.num_heads, self.head_dim).unbind(2)
        if self.rotary_emb_dim > 0:
            cos, sin = rotary_tables(torch.arange(L, device=x.device), self.rotary_emb_dim)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            slots = cache.k.shape[2]
            if self.window_size < 0 and L > slots:
                raise ValueError(f"KV cache full: allocated for {slots} positions, prefill of {L}")
            kept = torch.arange(max(0, L - slots), L, device=x.device)
            cache.k[:, :, kept % slots] = k[:, :, kept].to(cache.k.dtype)
            cache.v[:, :, kept % slots] = v[:, :, kept].to(cache.v.dtype)
            cache.seqlen.fill_(L)
        if self.window_size < 0 or self.window_size >= L - 1:  # the window reaches back to 0: plain causal (flash)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            i = torch.arange(L, device=x.device)
            offset = i[:, None] - i[None, :]
            allowed = (offset >= 0) & (offset <= self.window_size)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, -1))

    def _takes_varlen(self, x) -> bool:
        """Flash attention over the packed positions (no padding) where it runs: CUDA, half precision."""
        # The projections' dtype: autocast's where it runs (a stack's first layer may read a float32 input).
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        return (varlen_attn is not None and x.is_cuda and dtype in (torch.float16, torch.bfloat16)
                and (_VARLEN_WINDOW or self.window_size < 0) and not reference_requested())

    def _forward_varlen(self, x, cu_seqlens, max_seqlen=None):
        T = x.shape[1]
        # squeeze, not x[0]: select's backward zero-fills a (1, T, D) gradient and copies into it.
        qkv = self.Wqkv(x.squeeze(0)).view(T, 3, self.num_heads, self.head_dim)
        if self.rotary_emb_dim > 0:
            cos, sin = rotary_tables(positions_in_sequence(cu_seqlens, T), self.rotary_emb_dim)
            q, k, v = rotary_qkv(qkv, cos, sin)
        else:
            q, k, v = qkv.unbind(1)
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        cu = cu_seqlens.to(torch.int32)
        if _VARLEN_WINDOW:
            out = varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, window_size=(self.window_size, 0))
        else:
            out = varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, is_causal=True)
        return self.out_proj(out.reshape(1, T, -1))

    def step(self, x, cache: KVCache, mask=None):
        """One position: x (B, D) -> (B, D), each row at its own position `cache.seqlen`. Rows where mask
        (B,) is False do not advance (what they write is overwritten at their next real step)."""
        B = x.shape[0]
        slots = cache.k.shape[2]
        if self.window_size < 0:
            # Read only the filled part of the cache (one host sync): the cost follows the longest row.
            n = int(cache.seqlen.max()) + 1
            if n > slots:
                raise ValueError(f"KV cache full: allocated for {slots} positions")
        else:
            n = slots  # the ring holds exactly the window
        q, k, v = self.Wqkv(x).view(B, 3, self.num_heads, self.head_dim).unbind(1)  # (B, H, hd) each
        if self.rotary_emb_dim > 0:
            cos, sin = rotary_tables(cache.seqlen, self.rotary_emb_dim)  # one position per row
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        rows = torch.arange(B, device=x.device)
        slot = cache.seqlen % slots
        cache.k[rows, :, slot] = k.to(cache.k.dtype)
        cache.v[rows, :, slot] = v.to(cache.v.dtype)
        # Filled slots are all in the window: a ring never holds more than w + 1 positions.
        filled = torch.arange(n, device=x.device)[None, :] <= cache.seqlen[:, None]  # (B, n)
        k, v = cache.k[:, :, :n].to(q.dtype), cache.v[:, :, :n].to(q.dtype)
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=filled[:, None, None, :])
        cache.seqlen += 1 if mask is None else mask.long()
        return self.out_proj(out.reshape(B, -1))
