"""Rotary embeddings of the packed positions' queries and keys, one pass each way; equals
`hnet.ops.rotary.rotary_qkv`, computed in float32 and rounded once. Unfused, the rotation's slices, products
and concatenation were seven passes over q and k per layer and direction, through strided views.

The forward rotates q and k into one new buffer in one launch and returns v as a view of qkv, uncopied
(attention reads q, k and v through their strides); the backward rotates dq and dk back and copies dv into
qkv's gradient, the three in one launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2


@triton.jit(do_not_specialize=["n_heads"])
def _rotate(Q, K, V, Y, COS, SIN, n_heads, sqt, sqh, skt, skh, svt, svh, syt, sys, syh,
            HEAD_DIM: tl.constexpr, HALF: tl.constexpr, SIGN: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Y[t, s, h] for the slot s of the grid's third axis: s = 0, 1 rotate Q[t, h], K[t, h] by the angles of
    position t (SIGN -1: rotated back, the backward), s = 2 copies V[t, h]. Channel c < HALF pairs with
    c + HALF: y_c = x_c cos - x_{c+HALF} sin, y_{c+HALF} = x_{c+HALF} cos + x_c sin; channels from 2 HALF
    on are copied."""
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    slot = tl.program_id(2)
    if slot == 0:
        X, sxt, sxh = Q, sqt, sqh
    elif slot == 1:
        X, sxt, sxh = K, skt, skh
    else:
        X, sxt, sxh = V, svt, svh
    d = tl.arange(0, BLOCK_D)
    live = (heads < n_heads)[:, None] & (d < HEAD_DIM)[None, :]
    first, second = d < HALF, (d >= HALF) & (d < 2 * HALF)
    angle = tl.where(first, d, d - HALF)
    rotated = (first | second) & (d * 0 + slot < 2)  # v's slot copies
    cos = tl.load(COS + t * HALF + angle, mask=rotated, other=1.0)
    sin = tl.load(SIN + t * HALF + angle, mask=rotated, other=0.0)
    sin = tl.where(first, -sin, sin) * SIGN
    partner = tl.where(first, d + HALF, tl.where(second, d - HALF, d))
    row = X + t * sxt + heads[:, None] * sxh
    x = tl.load(row + d[None, :], mask=live, other=0.0).to(tl.float32)
    xp = tl.load(row + partner[None, :], mask=live & rotated[None, :], other=0.0).to(tl.float32)
    y = tl.where(rotated[None, :], x * cos[None, :] + xp * sin[None, :], x)
    tl.store(Y + t * syt + slot * sys + heads[:, None] * syh + d[None, :], y, mask=live)


def _rotate_into(out, cos, sin, sign: int, q, k, v=None):
    """out (T, 2 or 3, H, hd) <- q, k rotated (and v copied); q, k, v (T, H, hd) with unit stride along hd,
    cos/sin (T, half) float32 contiguous."""
    T, H, hd = q.shape
    if T == 0:
        return out
    block_h = min(next_power_of_2(H), max(1, 2048 // next_power_of_2(hd)))
    v_strides = (v.stride(0), v.stride(1)) if v is not None else (0, 0)
    grid = (T, cdiv(H, block_h), 2 if v is None else 3)
    # Without v the grid has no slot 2; q stands in for its pointer, as Triton types every branch's X alike.
    _rotate[grid](q, k, q if v is None else v, out, cos, sin, H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), *v_strides,
                  *out.stride()[:3], HEAD_DIM=hd, HALF=cos.shape[-1], SIGN=sign, BLOCK_H=block_h,
                  BLOCK_D=next_power_of_2(hd))
    return out


def _unit_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _RotaryQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        T, _, H, hd = qkv.shape
        qk = _rotate_into(qkv.new_empty(T, 2, H, hd), cos, sin, 1, qkv[:, 0], qkv[:, 1])
        ctx.save_for_backward(cos, sin)
        ctx.qkv_shape = qkv.shape
        # v is a view of qkv returned from here (not taken outside), so that its gradient comes to this backward
        # and lands in qkv's gradient with dq and dk, with no copy either way but that one.
        return qk[:, 0], qk[:, 1], qkv[:, 2]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        dqkv = dq.new_empty(ctx.qkv_shape)
        return _rotate_into(dqkv, cos, sin, -1, _unit_stride(dq), _unit_stride(dk), _unit_stride(dv)), None, None


def rotary_qkv(qkv, cos, sin):
    if qkv.dim() != 4 or qkv.shape[1] != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"rotary_qkv: qkv must be (T, 3, H, hd) with unit stride along hd, got {tuple(qkv.shape)}")
    if 2 * cos.shape[-1] > qkv.shape[-1]:
        raise ValueError(f"rotary_qkv: rotary dim {2 * cos.shape[-1]} exceeds the head dim {qkv.shape[-1]}")
    return _RotaryQKV.apply(qkv, cos, sin)
