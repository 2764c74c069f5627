"""Rotary position embeddings, GPT-NeoX style (channel i pairs with i + rot/2), on part of each head."""

import torch


def rotary_tables(positions, rot_dim: int, base: float = 10000.0):
    """cos, sin of shape (len(positions), rot_dim // 2), float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, device=positions.device, dtype=torch.float32) / rot_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """x (..., L, H, hd): rotate the first 2 * cos.shape[-1] channels of every head; cos/sin (L, rot/2)."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def rotary_qkv(qkv, cos, sin):
    """qkv (T, 3, H, hd), the packed positions' fused projection -> (q, k, v), each (T, H, hd), q and k
    rotated by cos/sin (T, rot/2)."""
    q, k, v = qkv.unbind(1)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def rotary_qkv_into(qkv, cos, sin, k_out, v_out):
    """A prefill's rotary_qkv: returns q (T, H, hd) rotated and writes k rotated and v into the first T rows of
    k_out and v_out (rows >= T, H, hd: a KV cache's slots, seen position-major), zeros into the rows after."""
    q, k, v = rotary_qkv(qkv, cos, sin)
    T = q.shape[0]
    for out, new in ((k_out, k), (v_out, v)):
        out[:T] = new
        out[T:] = 0
    return q
