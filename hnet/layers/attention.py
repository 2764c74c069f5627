"""Causal multi-head attention with partial rotary embeddings and an optional sliding window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hnet.layers.rotary import apply_rotary, rotary_tables
from hnet.ops.packed import unpack


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

    def forward(self, x, cu_seqlens=None):
        """x (B, L, D); or packed (1, T, D) with cu_seqlens, every sequence attending only to itself."""
        if cu_seqlens is not None:
            rows, valid = unpack(x[0], cu_seqlens)
            return self.forward(rows)[valid].unsqueeze(0)
        B, L, _ = x.shape
        q, k, v = self.Wqkv(x).view(B, L, 3, self.num_heads, self.head_dim).unbind(2)
        if self.rotary_emb_dim > 0:
            cos, sin = rotary_tables(torch.arange(L, device=x.device), self.rotary_emb_dim)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.window_size < 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            i = torch.arange(L, device=x.device)
            offset = i[:, None] - i[None, :]
            allowed = (offset >= 0) & (offset <= self.window_size)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, -1))

