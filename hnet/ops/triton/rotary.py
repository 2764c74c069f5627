"""Rotary embeddings of the packed positions' queries and keys, one pass each way; equals
`hnet.ops.rotary.rotary_qkv`, computed in float32 and rounded once. Unfused, the rotation's slices, products
and concatenation were seven passes over q and k per layer and direction, through strided views."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["n_heads"])
def _rotate(X, Y, COS, SIN, n_heads, sxt, sxh, syt, syh,
            HEAD_DIM: tl.constexpr, HALF: tl.constexpr, SIGN: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Y[t, h] = X[t, h] rotated by the angles of position t (SIGN -1: rotated back, the backward). Channel
    c < HALF pairs with c + HALF: y_c = x_c cos - x_{c+HALF} sin, y_{c+HALF} = x_{c+HALF} cos + x_c sin;
    channels from 2 HALF on are copied."""
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    live = (heads < n_heads)[:, None] & (d < HEAD_DIM)[None, :]
    first, second = d < HALF, (d >= HALF) & (d < 2 * HALF)
    angle = tl.where(first, d, d - HALF)
    rotated = first | second
    cos = tl.load(COS + t * HALF + angle, mask=rotated, other=1.0)
    sin = tl.load(SIN + t * HALF + angle, mask=rotated, other=0.0)
    sin = tl.where(first, -sin, sin) * SIGN
    partner = tl.where(first, d + HALF, tl.where(second, d - HALF, d))
    row = X + t * sxt + heads[:, None] * sxh
    x = tl.load(row + d[None, :], mask=live, other=0.0).to(tl.float32)
    xp = tl.load(row + partner[None, :], mask=live & rotated[None, :], other=0.0).to(tl.float32)
    tl.store(Y + t * syt + heads[:, None] * syh + d[None, :], x * cos[None, :] + xp * sin[None, :], mask=live)


def _rotate_into(x, out, cos, sin, sign: int):
    """x, out (T, H, hd), unit stride along hd; cos/sin (T, half) float32 contiguous."""
    T, H, hd = x.shape
    if T == 0:
        return out
    block_h = min(triton.next_power_of_2(H), max(1, 2048 // triton.next_power_of_2(hd)))
    _rotate[(T, triton.cdiv(H, block_h))](x, out, cos, sin, H, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                                          HEAD_DIM=hd, HALF=cos.shape[-1], SIGN=sign,
                                          BLOCK_H=block_h, BLOCK_D=triton.next_power_of_2(hd))
    return out


class _RotaryQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        q, k = (_rotate_into(qkv[:, i], torch.empty_like(qkv[:, i], memory_format=torch.contiguous_format), cos, sin, 1)
                for i in (0, 1))
        ctx.save_for_backward(cos, sin)
        ctx.qkv_shape = qkv.shape
        # v is copied rather than returned as a view of qkv, so that its gradient lands in the same buffer.
        return q, k, qkv[:, 2].contiguous()

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        dqkv = dq.new_empty(ctx.qkv_shape)
        for i, g in ((0, dq), (1, dk)):
            _rotate_into(g if g.stride(-1) == 1 else g.contiguous(), dqkv[:, i], cos, sin, -1)
        dqkv[:, 2].copy_(dv)
        return dqkv, None, None


def rotary_qkv(qkv, cos, sin):
    if qkv.dim() != 4 or qkv.shape[1] != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"rotary_qkv: qkv must be (T, 3, H, hd) with unit stride along hd, got {tuple(qkv.shape)}")
    if 2 * cos.shape[-1] > qkv.shape[-1]:
        raise ValueError(f"rotary_qkv: rotary dim {2 * cos.shape[-1]} exceeds the head dim {qkv.shape[-1]}")
    return _RotaryQKV.apply(qkv, cos, sin)
