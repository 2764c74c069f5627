"""Rotary embeddings of the packed positions' queries and keys, one pass each way; equals
`hnet.ops.rotary.rotary_qkv`, computed in float32 and rounded once. Unfused, the rotation's slices, products
and concatenation were seven passes over q and k per layer and direction, through strided views.

The forward rotates q and k into one new buffer in one launch and returns v as a view of qkv, uncopied
(attention reads q, k and v through their strides); the backward rotates dq and dk back and copies dv into
qkv's gradient, the three in one launch. A prefill's keys and values go straight into a KV cache
(`rotary_qkv_into`), its free slots zeroed in the same launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2


@triton.jit(do_not_specialize=["n_heads", "n_pos"])
def _rotate(Q, K, V, YQ, YK, YV, COS, SIN, n_heads, n_pos, sqt, sqh, skt, skh, svt, svh,
            syqt, syqh, sykt, sykh, syvt, syvh,
            HEAD_DIM: tl.constexpr, HALF: tl.constexpr, SIGN: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """For the slot s of the grid's third axis: s = 0, 1 rotate Q[t, h], K[t, h] into YQ[t, h], YK[t, h] by
    the angles of position t (SIGN -1: rotated back, the backward), s = 2 copies V[t, h] into YV[t, h].
    Channel c < HALF pairs with c + HALF: y_c = x_c cos - x_{c+HALF} sin, y_{c+HALF} = x_{c+HALF} cos + x_c sin;
    channels from 2 HALF on are copied. Rows t >= n_pos (the grid may reach past the positions) get zeros in
    YK and YV: a KV cache's free slots."""
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    slot = tl.program_id(2)
    if slot == 0:
        X, sxt, sxh, Y, syt, syh = Q, sqt, sqh, YQ, syqt, syqh
    elif slot == 1:
        X, sxt, sxh, Y, syt, syh = K, skt, skh, YK, sykt, sykh
    else:
        X, sxt, sxh, Y, syt, syh = V, svt, svh, YV, syvt, syvh
    d = tl.arange(0, BLOCK_D)
    real = d * 0 + t < n_pos  # (BLOCK_D,), as the interpreter takes masks of blocks only
    live = (heads < n_heads)[:, None] & (d < HEAD_DIM)[None, :]
    first, second = d < HALF, (d >= HALF) & (d < 2 * HALF)
    angle = tl.where(first, d, d - HALF)
    rotated = (first | second) & (d * 0 + slot < 2)  # v's slot copies
    cos = tl.load(COS + t * HALF + angle, mask=rotated & real, other=1.0)
    sin = tl.load(SIN + t * HALF + angle, mask=rotated & real, other=0.0)
    sin = tl.where(first, -sin, sin) * SIGN
    partner = tl.where(first, d + HALF, tl.where(second, d - HALF, d))
    row = X + t * sxt + heads[:, None] * sxh
    x = tl.load(row + d[None, :], mask=live & real[None, :], other=0.0).to(tl.float32)
    xp = tl.load(row + partner[None, :], mask=live & (real & rotated)[None, :], other=0.0).to(tl.float32)
    y = tl.where(rotated[None, :], x * cos[None, :] + xp * sin[None, :], x)
    tl.store(Y + t * syt + heads[:, None] * syh + d[None, :], y, mask=live & (real | (d * 0 + slot > 0))[None, :])


def _rotate_into(yq, yk, yv, cos, sin, sign: int, q, k, v=None):
    """yq, yk (, yv) <- q, k rotated (and v copied); q, k, v (T, H, hd) with unit stride along hd, cos/sin
    (T, half) float32 contiguous; each y (rows, H, hd) with unit stride along hd, strided otherwise. yk and
    yv may have rows past T (yq not): those are zeroed."""
    T, H, hd = q.shape
    rows = yk.shape[0]
    if rows == 0:
        return
    block_h = min(next_power_of_2(H), max(1, 2048 // next_power_of_2(hd)))
    v_strides = (v.stride(0), v.stride(1)) if v is not None else (0, 0)
    yv_strides = (yv.stride(0), yv.stride(1)) if v is not None else (0, 0)
    grid = (rows, cdiv(H, block_h), 2 if v is None else 3)
    # Without v the grid has no slot 2; q and yq stand in for its pointers, as Triton types every branch alike.
    _rotate[grid](q, k, q if v is None else v, yq, yk, yq if v is None else yv, cos, sin, H, T,
                  q.stride(0), q.stride(1), k.stride(0), k.stride(1), *v_strides,
                  yq.stride(0), yq.stride(1), yk.stride(0), yk.stride(1), *yv_strides,
                  HEAD_DIM=hd, HALF=cos.shape[-1], SIGN=sign, BLOCK_H=block_h, BLOCK_D=next_power_of_2(hd))


def _unit_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _RotaryQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        T, _, H, hd = qkv.shape
        qk = qkv.new_empty(T, 2, H, hd)
        _rotate_into(qk[:, 0], qk[:, 1], None, cos, sin, 1, qkv[:, 0], qkv[:, 1])
        ctx.save_for_backward(cos, sin)
        ctx.qkv_shape = qkv.shape
        # v is a view of qkv returned from here (not taken outside), so that its gradient comes to this backward
        # and lands in qkv's gradient with dq and dk, with no copy either way but that one.
        return qk[:, 0], qk[:, 1], qkv[:, 2]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        dqkv = dq.new_empty(ctx.qkv_shape)
        _rotate_into(dqkv[:, 0], dqkv[:, 1], dqkv[:, 2], cos, sin, -1, _unit_stride(dq), _unit_stride(dk), _unit_stride(dv))
        return dqkv, None, None


def _check(qkv, cos):
    if qkv.dim() != 4 or qkv.shape[1] != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"rotary_qkv: qkv must be (T, 3, H, hd) with unit stride along hd, got {tuple(qkv.shape)}")
    if 2 * cos.shape[-1] > qkv.shape[-1]:
        raise ValueError(f"rotary_qkv: rotary dim {2 * cos.shape[-1]} exceeds the head dim {qkv.shape[-1]}")


def rotary_qkv(qkv, cos, sin):
    _check(qkv, cos)
    return _RotaryQKV.apply(qkv, cos, sin)


def rotary_qkv_into(qkv, cos, sin, k_out, v_out):
    """`hnet.ops.rotary.rotary_qkv_into` in one launch (no autograd: a prefill's)."""
    _check(qkv, cos)
    T, _, H, hd = qkv.shape
    if k_out.shape[0] < T or k_out.shape != v_out.shape or k_out.stride(-1) != 1 or v_out.stride(-1) != 1:
        raise ValueError(f"rotary_qkv_into: k_out and v_out must be alike, (>= {T}, {H}, {hd}) with unit stride "
                         f"along hd, got {tuple(k_out.shape)} and {tuple(v_out.shape)}")
    q = qkv.new_empty(T, H, hd)
    _rotate_into(q, k_out, v_out, cos.float().contiguous(), sin.float().contiguous(), 1, qkv[:, 0], qkv[:, 1], qkv[:, 2])
    return q
