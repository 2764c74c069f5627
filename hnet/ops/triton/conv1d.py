"""Depthwise causal conv1d (+ SiLU), forward and backward, packed-sequence aware; equals
`hnet.ops.conv1d.causal_conv1d`. x (b, l, d) with unit stride over d, weight (d, K), K <= 4 in
Mamba-2 but any small K works: the taps are unrolled.

x, the backward's dout and its dx may be strided views (rows of a wider tensor): Mamba-2's fused mixer
(`hnet.ops.triton.mamba2`) reads x from in_proj's output and writes dx into the gradient of that output,
through `conv1d_forward` and `conv1d_backward`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2
from hnet.ops.triton.tuning import launch_fastest


@triton.jit
def _preactivation(X, W, BIAS, SEQ, b, t, cols, l, d, stride_xb, stride_xl, stride_sb,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """bias + sum_k w[:, k] x[t - (K-1) + k] at positions t (BLOCK_L,) and channels cols (BLOCK_D,)."""
    in_d = cols < d
    acc = tl.zeros([t.shape[0], cols.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=in_d, other=0.0).to(tl.float32)[None, :]
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * stride_sb + t, mask=t < l, other=-1)
    for k in tl.static_range(K):
        src = t - (K - 1 - k)
        live = (src >= 0) & (t < l)
        if HAS_SEQ:  # a tap never reaches into an earlier packed sequence
            live &= tl.load(SEQ + b * stride_sb + src, mask=live, other=-2) == seq_t
        xs = tl.load(X + b * stride_xb + src[:, None] * stride_xl + cols[None, :], mask=live[:, None] & in_d[None, :], other=0.0)
        acc += xs.to(tl.float32) * tl.load(W + cols * K + k, mask=in_d, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_fwd(X, W, BIAS, SEQ, OUT, l, d, stride_xb, stride_xl, stride_sb,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    a = _preactivation(X, W, BIAS, SEQ, b, t, cols, l, d, stride_xb, stride_xl, stride_sb, K, HAS_BIAS, HAS_SEQ)
    if SILU:
        a = a * tl.sigmoid(a)
    tl.store(OUT + b * l * d + t[:, None] * d + cols[None, :], a, mask=(t < l)[:, None] & (cols < d)[None, :])


@triton.jit
def _preactivation_grad(X, W, BIAS, SEQ, DOUT, b, t, cols, l, d, stride_xb, stride_xl, stride_sb, stride_ob, stride_ol,
                        K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    """da at positions t (float32, zero past l): dout through the SiLU, its pre-activation recomputed from x."""
    dout = tl.load(DOUT + b * stride_ob + t[:, None] * stride_ol + cols[None, :], mask=(t < l)[:, None] & (cols < d)[None, :],
                   other=0.0)
    da = dout.to(tl.float32)
    if SILU:
        a = _preactivation(X, W, BIAS, SEQ, b, t, cols, l, d, stride_xb, stride_xl, stride_sb, K, HAS_BIAS, HAS_SEQ)
        sig = tl.sigmoid(a)
        da = da * sig * (1 + a * (1 - sig))
    return da


@triton.jit
def _store_weight_grads(X, SEQ, DW_PARTIAL, DB_PARTIAL, da, b, t, cols, l, d, stride_xb, stride_xl, stride_sb,
                        K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """This block's share of dweight (d, K) and dbias (d,) from its own da: one row of partial sums per block."""
    in_d = cols < d
    partial = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + partial * d + cols, tl.sum(da, axis=0), mask=in_d)
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * stride_sb + t, mask=t < l, other=-1)
    for k in tl.static_range(K):
        src = t - (K - 1 - k)
        ok = (src >= 0) & (t < l)
        if HAS_SEQ:
            ok &= tl.load(SEQ + b * stride_sb + src, mask=ok, other=-2) == seq_t
        xs = tl.load(X + b * stride_xb + src[:, None] * stride_xl + cols[None, :], mask=ok[:, None] & in_d[None, :], other=0.0)
        tl.store(DW_PARTIAL + (partial * d + cols) * K + k, tl.sum(da * xs.to(tl.float32), axis=0), mask=in_d)


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_bwd(X, W, BIAS, SEQ, DOUT, DX, DW_PARTIAL, DB_PARTIAL, l, d, stride_xb, stride_xl, stride_sb,
                stride_ob, stride_ol, stride_dxb, stride_dxl, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx_t = sum_s w[:, K-1-s] da_{t+s} over taps that stay in t's sequence, da the gradient at the
    pre-activation. The da_{t+s} this block needs reach past its end, so each is recomputed here from
    x (K^2 cached loads); the two-pass variant below writes da out once and reads it back instead."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * stride_sb + t, mask=t < l, other=-1)
    dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for s in tl.static_range(K):
        dst = t + s
        da = _preactivation_grad(X, W, BIAS, SEQ, DOUT, b, dst, cols, l, d, stride_xb, stride_xl, stride_sb,
                                 stride_ob, stride_ol, K, HAS_BIAS, HAS_SEQ, SILU)
        if s == 0:  # this block's own da
            _store_weight_grads(X, SEQ, DW_PARTIAL, DB_PARTIAL, da, b, t, cols, l, d, stride_xb, stride_xl, stride_sb,
                                K, HAS_BIAS, HAS_SEQ)
        live = dst < l
        if HAS_SEQ:
            live &= tl.load(SEQ + b * stride_sb + dst, mask=live, other=-2) == seq_t
        dx += tl.where(live[:, None], da, 0.0) * tl.load(W + cols * K + (K - 1 - s), mask=in_d, other=0.0).to(tl.float32)[None, :]
    tl.store(DX + b * stride_dxb + t[:, None] * stride_dxl + cols[None, :], dx, mask=(t < l)[:, None] & in_d[None, :])


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_bwd_da(X, W, BIAS, SEQ, DOUT, DA, DW_PARTIAL, DB_PARTIAL, l, d, stride_xb, stride_xl, stride_sb,
                   stride_ob, stride_ol, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
                   BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """The two-pass backward, pass 1: da (float32) at this block's positions, and its dweight and dbias."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    da = _preactivation_grad(X, W, BIAS, SEQ, DOUT, b, t, cols, l, d, stride_xb, stride_xl, stride_sb,
                             stride_ob, stride_ol, K, HAS_BIAS, HAS_SEQ, SILU)
    tl.store(DA + b * l * d + t[:, None] * d + cols[None, :], da, mask=(t < l)[:, None] & (cols < d)[None, :])
    _store_weight_grads(X, SEQ, DW_PARTIAL, DB_PARTIAL, da, b, t, cols, l, d, stride_xb, stride_xl, stride_sb,
                        K, HAS_BIAS, HAS_SEQ)


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_bwd_dx(DA, W, SEQ, DX, l, d, stride_sb, stride_dxb, stride_dxl, K: tl.constexpr, HAS_SEQ: tl.constexpr,
                   BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 2: dx_t = sum_s w[:, K-1-s] da_{t+s} over the taps that stay in t's sequence."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * stride_sb + t, mask=t < l, other=-1)
    dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for s in tl.static_range(K):
        dst = t + s
        live = dst < l
        if HAS_SEQ:
            live &= tl.load(SEQ + b * stride_sb + dst, mask=live, other=-2) == seq_t
        da = tl.load(DA + b * l * d + dst[:, None] * d + cols[None, :], mask=live[:, None] & in_d[None, :], other=0.0)
        dx += da * tl.load(W + cols * K + (K - 1 - s), mask=in_d, other=0.0).to(tl.float32)[None, :]
    tl.store(DX + b * stride_dxb + t[:, None] * stride_dxl + cols[None, :], dx, mask=(t < l)[:, None] & in_d[None, :])


@triton.jit
def _reach(SEQ, b, t, l, stride_sb, K: tl.constexpr, HAS_SEQ: tl.constexpr, AHEAD: tl.constexpr):
    """How many of the K-1 positions after t (AHEAD) or before it share t's row and packed sequence. A
    sequence is one run of positions (as cu_seqlens make them), so the taps that reach them are the first ones."""
    if HAS_SEQ:
        seq_t = tl.load(SEQ + b * stride_sb + t, mask=t < l, other=-1)
        n = tl.zeros_like(t)
        live = t < l
        for r in tl.static_range(1, K):
            other = t + r if AHEAD else t - r
            live &= (other < l) & (other >= 0)
            live &= tl.load(SEQ + b * stride_sb + other, mask=live, other=-2) == seq_t
            n += live.to(tl.int32)
    elif AHEAD:
        n = tl.minimum(l - 1 - t, K - 1)
    else:
        n = tl.minimum(t, K - 1)
    return n


@triton.jit
def _weights(W, cols, in_d, K: tl.constexpr):
    """The K <= 4 taps' weights at channels cols, float32 rows (1, BLOCK_D); zero past K."""
    w0 = tl.load(W + cols * K + 0, mask=in_d, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(W + cols * K + 1, mask=in_d & (K > 1), other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(W + cols * K + 2, mask=in_d & (K > 2), other=0.0).to(tl.float32)[None, :]
    w3 = tl.load(W + cols * K + 3, mask=in_d & (K > 3), other=0.0).to(tl.float32)[None, :]
    return w0, w1, w2, w3


@triton.jit
def _tap(w0, w1, w2, w3, k: tl.constexpr):
    """The weight row of tap k (0 <= k < 4) of `_weights`."""
    if k == 0:
        w = w0
    elif k == 1:
        w = w1
    elif k == 2:
        w = w2
    else:
        w = w3
    return w


@triton.jit
def _add_weight_sums(db, dw0, dw1, dw2, dw3, da, x0, x1, x2, x3, K: tl.constexpr):
    """A tile's share of dbias and of dweight's K <= 4 taps (da times the tap's x), added elementwise."""
    dw0 += da * x0
    if K > 1:
        dw1 += da * x1
    if K > 2:
        dw2 += da * x2
    if K > 3:
        dw3 += da * x3
    return db + da, dw0, dw1, dw2, dw3


@triton.jit
def _store_weight_sums(DW_PARTIAL, DB_PARTIAL, partial, d, cols, in_d, db, dw0, dw1, dw2, dw3, K: tl.constexpr,
                       HAS_BIAS: tl.constexpr):
    """One program's partial dweight (d, K) and dbias (d,) from its elementwise sums (BLOCK_L, BLOCK_D)."""
    if HAS_BIAS:
        tl.store(DB_PARTIAL + partial * d + cols, tl.sum(db, axis=0), mask=in_d)
    for k in tl.static_range(K):
        tl.store(DW_PARTIAL + (partial * d + cols) * K + k, tl.sum(_tap(dw0, dw1, dw2, dw3, k), axis=0), mask=in_d)


@triton.jit
def _da_and_taps(X, BIAS, SEQ, DOUT, w0, w1, w2, w3, b, t, cols, l, d, stride_xb, stride_xl, stride_sb, stride_ob,
                 stride_ol, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    """da at positions t (float32, zero past l) and the K <= 4 taps of x it came from, x0 the farthest back
    (float32, zero where a tap leaves the row or t's packed sequence), each loaded once for the pre-activation
    and the dweight. Taps past K come back as x0 and are not to be used."""
    in_l = t < l
    in_d = cols < d
    behind = _reach(SEQ, b, t, l, stride_sb, K, HAS_SEQ, False)
    x_at = X + b * stride_xb + cols[None, :]
    x0 = tl.load(x_at + (t - (K - 1))[:, None] * stride_xl, mask=(in_l & (K - 1 <= behind))[:, None] & in_d[None, :],
                 other=0.0).to(tl.float32)
    a = x0 * w0
    x1, x2, x3 = x0, x0, x0
    if K > 1:
        x1 = tl.load(x_at + (t - (K - 2))[:, None] * stride_xl, mask=(in_l & (K - 2 <= behind))[:, None] & in_d[None, :],
                     other=0.0).to(tl.float32)
        a += x1 * w1
    if K > 2:
        x2 = tl.load(x_at + (t - (K - 3))[:, None] * stride_xl, mask=(in_l & (K - 3 <= behind))[:, None] & in_d[None, :],
                     other=0.0).to(tl.float32)
        a += x2 * w2
    if K > 3:
        x3 = tl.load(x_at + (t - (K - 4))[:, None] * stride_xl, mask=(in_l & (K - 4 <= behind))[:, None] & in_d[None, :],
                     other=0.0).to(tl.float32)
        a += x3 * w3
    if HAS_BIAS:
        a += tl.load(BIAS + cols, mask=in_d, other=0.0).to(tl.float32)[None, :]
    da = tl.load(DOUT + b * stride_ob + t[:, None] * stride_ol + cols[None, :], mask=in_l[:, None] & in_d[None, :],
                 other=0.0).to(tl.float32)
    if SILU:
        sig = tl.sigmoid(a)
        da = da * sig * (1 + a * (1 - sig))
    return da, x0, x1, x2, x3


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_bwd_segment(X, W, BIAS, SEQ, DOUT, DX, DW_PARTIAL, DB_PARTIAL, SCRATCH, l, d, stride_xb, stride_xl,
                        stride_sb, stride_ob, stride_ol, stride_dxb, stride_dxl, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                        SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, HALO: tl.constexpr,
                        TILES: tl.constexpr):
    """The one-pass backward over TILES tiles of positions, one after the other, of one row and channel
    block: da parked in the program's slot of SCRATCH (with the HALO rows after it) and read back shifted
    by each tap, and dweight and dbias summed elementwise over the tiles, reduced once at the end (K <= 4).
    A tile's K taps of x are loaded once, for its pre-activation and its dweight, and which taps stay in the
    packed sequence is found once a tile (`_reach`), not at every tap."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b, seg = tl.program_id(1), tl.program_id(2)
    in_d = cols < d
    rows = tl.arange(0, BLOCK_L)
    halo = tl.arange(0, HALO)
    offs = tl.arange(0, BLOCK_D)
    slot = SCRATCH + ((b * tl.num_programs(2) + seg) * tl.num_programs(0) + tl.program_id(0)) * (BLOCK_L + HALO) * BLOCK_D
    w0, w1, w2, w3 = _weights(W, cols, in_d, K)
    zero = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    db, dw0, dw1, dw2, dw3 = zero, zero, zero, zero, zero  # elementwise sums over the tiles
    for i in range(TILES):
        t = (seg * TILES + i) * BLOCK_L + rows
        in_l = t < l
        da, x0, x1, x2, x3 = _da_and_taps(X, BIAS, SEQ, DOUT, w0, w1, w2, w3, b, t, cols, l, d, stride_xb, stride_xl,
                                          stride_sb, stride_ob, stride_ol, K, HAS_BIAS, HAS_SEQ, SILU)
        ahead = _reach(SEQ, b, t, l, stride_sb, K, HAS_SEQ, True)
        db, dw0, dw1, dw2, dw3 = _add_weight_sums(db, dw0, dw1, dw2, dw3, da, x0, x1, x2, x3, K)
        da_next = _preactivation_grad(X, W, BIAS, SEQ, DOUT, b, (seg * TILES + i + 1) * BLOCK_L + halo, cols, l, d,
                                      stride_xb, stride_xl, stride_sb, stride_ob, stride_ol, K, HAS_BIAS, HAS_SEQ, SILU)
        tl.debug_barrier()  # the previous tile's reads of the slot are done
        tl.store(slot + rows[:, None] * BLOCK_D + offs[None, :], da)
        tl.store(slot + (BLOCK_L + halo)[:, None] * BLOCK_D + offs[None, :], da_next)
        tl.debug_barrier()  # the whole tile is in the slot
        dx = da * _tap(w0, w1, w2, w3, K - 1)  # dx_t = sum_s w[:, K-1-s] da_{t+s}; s = 0: the position's own
        for s in tl.static_range(1, K):
            da_s = tl.load(slot + (rows + s)[:, None] * BLOCK_D + offs[None, :])
            dx += tl.where((s <= ahead)[:, None], da_s, 0.0) * _tap(w0, w1, w2, w3, K - 1 - s)
        tl.store(DX + b * stride_dxb + t[:, None] * stride_dxl + cols[None, :], dx, mask=in_l[:, None] & in_d[None, :])
    _store_weight_sums(DW_PARTIAL, DB_PARTIAL, b * tl.num_programs(2) + seg, d, cols, in_d, db, dw0, dw1, dw2, dw3,
                       K, HAS_BIAS)


@triton.jit(do_not_specialize=["l", "stride_sb"])
def _conv1d_bwd_gather(X, W, BIAS, SEQ, DOUT, DX, DW_PARTIAL, DB_PARTIAL, l, d, stride_xb, stride_xl, stride_sb,
                       stride_ob, stride_ol, stride_dxb, stride_dxl, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                       HAS_SEQ: tl.constexpr, SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                       TILES: tl.constexpr):
    """The one-pass backward over TILES overlapping tiles of one row and channel block. A tile computes da at
    BLOCK_L positions and owns the first BLOCK_L - (K-1): their dx reads the da of the K-1 after them, in the
    same tile, shifted by tl.gather (through shared memory, no round trip to L2). dweight and dbias are
    summed over the owned positions elementwise and reduced once at the end (K <= 4)."""
    OWN: tl.constexpr = BLOCK_L - (K - 1)
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b, seg = tl.program_id(1), tl.program_id(2)
    in_d = cols < d
    rows = tl.arange(0, BLOCK_L)
    w0, w1, w2, w3 = _weights(W, cols, in_d, K)
    zero = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    db, dw0, dw1, dw2, dw3 = zero, zero, zero, zero, zero  # elementwise sums over the tiles
    for i in range(TILES):
        t = (seg * TILES + i) * OWN + rows
        owned = (rows < OWN) & (t < l)
        da, x0, x1, x2, x3 = _da_and_taps(X, BIAS, SEQ, DOUT, w0, w1, w2, w3, b, t, cols, l, d, stride_xb, stride_xl,
                                          stride_sb, stride_ob, stride_ol, K, HAS_BIAS, HAS_SEQ, SILU)
        db, dw0, dw1, dw2, dw3 = _add_weight_sums(db, dw0, dw1, dw2, dw3, tl.where(owned[:, None], da, 0.0),
                                                  x0, x1, x2, x3, K)
        ahead = _reach(SEQ, b, t, l, stride_sb, K, HAS_SEQ, True)
        dx = da * _tap(w0, w1, w2, w3, K - 1)  # dx_t = sum_s w[:, K-1-s] da_{t+s}; s = 0: the position's own
        for s in tl.static_range(1, K):
            later = tl.broadcast_to(tl.minimum(rows + s, BLOCK_L - 1)[:, None], (BLOCK_L, BLOCK_D))
            dx += tl.where((s <= ahead)[:, None], tl.gather(da, later, axis=0), 0.0) * _tap(w0, w1, w2, w3, K - 1 - s)
        tl.store(DX + b * stride_dxb + t[:, None] * stride_dxl + cols[None, :], dx, mask=owned[:, None] & in_d[None, :])
    _store_weight_sums(DW_PARTIAL, DB_PARTIAL, b * tl.num_programs(2) + seg, d, cols, in_d, db, dw0, dw1, dw2, dw3,
                       K, HAS_BIAS)


# Positions x channels per program, the default first. Tiles of 128 x 128 or more take 8 warps: with 4 they
# spill registers, compile for 5-20 s each and ran 10-20x slower on the H200. The backward comes in four
# variants (its da_{t+s} reach past a tile's end): "two_pass" (da written out in float32, then read back
# shifted), "segment" (one pass, da parked in an L2-resident slot per program, over `tiles` consecutive
# tiles), "gather" (one pass, overlapping tiles, da shifted in shared memory by tl.gather) and "recompute"
# (each pre-activation recomputed K times). Timing decides. On the H100 (session 20; 8 x 8192 x 2304, bf16,
# the 1-stage L step's shape) "gather" 32 x 64 was the fastest packed (1008 us, "segment" 1069, "two_pass"
# 1236) and "segment" 32 x 64 unpacked (834 us, "gather" 899); gather's 64 x 64 x 4 warps and 128 x 64 tiles
# took 1.8-2.7 ms and were dropped.
CANDIDATES = [dict(block_l=128, block_d=64, num_warps=4)] + [
    dict(block_l=bl, block_d=bd, num_warps=w) for bl in (64, 128, 256) for bd in (64, 128) for w in (4, 8)
    if w == 8 or bl * bd < 128 * 128]
BWD_CANDIDATES = [dict(block_l=128, block_d=64, num_warps=4, variant="two_pass")] + [
    dict(block_l=bl, block_d=bd, num_warps=w, variant="two_pass") for bl in (64, 128) for bd in (64, 128)
    for w in (4, 8) if w == 8 or bl * bd < 128 * 128] + [
    dict(block_l=bl, block_d=bd, num_warps=w, variant="segment", tiles=n)
    for bl, bd, w, n in ((32, 64, 4, 32), (32, 64, 4, 8), (64, 64, 8, 32), (16, 128, 4, 32))] + [
    dict(block_l=bl, block_d=bd, num_warps=w, variant="recompute") for bl, bd, w in ((64, 64, 4), (64, 64, 8), (128, 64, 8), (64, 128, 8))] + [
    dict(block_l=bl, block_d=bd, num_warps=w, variant="gather", tiles=n)
    for bl, bd, w, n in ((32, 64, 4, 32), (64, 64, 8, 16))]


def _halo(K: int) -> int:
    """Rows past a tile's end whose da its dx needs (K - 1), as a power of two."""
    return next_power_of_2(max(K - 1, 1))


def conv1d_forward(x, weight, bias=None, seq_idx=None, silu: bool = True):
    """out (b, l, d), contiguous in x's dtype; x may be a strided view with unit stride over d, weight (d, K)
    contiguous, seq_idx (b, l) with unit stride or None."""
    b, l, d = x.shape
    K = weight.shape[-1]
    out = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    seq_stride = seq_idx.stride(0) if seq_idx is not None else 0

    def launch(block_l, block_d, num_warps=4):
        grid = (b, cdiv(l, block_l), cdiv(d, block_d))
        _conv1d_fwd[grid](x, weight, bias, seq_idx, out, l, d, x.stride(0), x.stride(1), seq_stride,
                          K=K, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, SILU=silu,
                          BLOCK_L=block_l, BLOCK_D=block_d, num_warps=num_warps)

    key = (d, K, x.dtype, bias is None, seq_idx is None, silu)
    launch_fastest("conv1d_fwd", key, b * l, CANDIDATES, launch)
    return out


def conv1d_backward(dout, x, weight, bias=None, seq_idx=None, silu: bool = True, dx=None):
    """(dx, dweight, dbias) of `conv1d_forward`. dout and dx (b, l, d) may be strided views with unit stride
    over d; dx, if given, is written in place (in its own dtype), else a new tensor in x's dtype."""
    b, l, d = x.shape
    K = weight.shape[-1]
    if dx is None:
        dx = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    seq_stride = seq_idx.stride(0) if seq_idx is not None else 0

    def launch(block_l, block_d, num_warps=4, variant="two_pass", tiles=8):  # -> dweight, dbias partial sums
        grid = (b, cdiv(l, block_l), cdiv(d, block_d))
        if variant == "gather":  # overlapping tiles, each owning all but its last K - 1 positions
            grid = (b, cdiv(l, block_l - (K - 1)), grid[2])
        n_partials = b * (cdiv(grid[1], tiles) if variant in ("segment", "gather") else grid[1])
        dw_partial = torch.empty(n_partials, d, K, device=x.device, dtype=torch.float32)
        db_partial = torch.empty(n_partials, d, device=x.device, dtype=torch.float32) if bias is not None else None
        flags = dict(K=K, HAS_SEQ=seq_idx is not None, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=num_warps)
        args = (l, d, x.stride(0), x.stride(1), seq_stride, dout.stride(0), dout.stride(1))
        dx_strides = (dx.stride(0), dx.stride(1))
        if variant == "segment":
            seg_grid = (grid[2], b, cdiv(grid[1], tiles))
            halo = _halo(K)
            scratch = torch.empty(*seg_grid, block_l + halo, block_d, device=x.device, dtype=torch.float32)
            _conv1d_bwd_segment[seg_grid](x, weight, bias, seq_idx, dout, dx, dw_partial, db_partial, scratch,
                                          *args, *dx_strides, HAS_BIAS=bias is not None, SILU=silu, HALO=halo,
                                          TILES=tiles, **flags)
        elif variant == "gather":
            _conv1d_bwd_gather[(grid[2], b, cdiv(grid[1], tiles))](
                x, weight, bias, seq_idx, dout, dx, dw_partial, db_partial, *args, *dx_strides,
                HAS_BIAS=bias is not None, SILU=silu, TILES=tiles, **flags)
        elif variant == "two_pass":
            da = torch.empty(b, l, d, device=x.device, dtype=torch.float32)
            _conv1d_bwd_da[grid](x, weight, bias, seq_idx, dout, da, dw_partial, db_partial, *args,
                                 HAS_BIAS=bias is not None, SILU=silu, **flags)
            _conv1d_bwd_dx[grid](da, weight, seq_idx, dx, l, d, seq_stride, *dx_strides, **flags)
        else:
            _conv1d_bwd[grid](x, weight, bias, seq_idx, dout, dx, dw_partial, db_partial, *args, *dx_strides,
                              HAS_BIAS=bias is not None, SILU=silu, **flags)
        return dw_partial, db_partial

    key = (d, K, x.dtype, bias is None, seq_idx is None, silu)
    candidates = [c for c in BWD_CANDIDATES if K <= 4 or c["variant"] not in ("segment", "gather")]  # 4 taps unrolled
    dw_partial, db_partial = launch_fastest("conv1d_bwd", key, b * l, candidates, launch)
    dw = dw_partial.sum(0).to(weight.dtype)
    db = db_partial.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dw, db


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, silu):
        if x.stride(-1) != 1:
            x = x.contiguous()
        weight = weight.contiguous()
        ctx.save_for_backward(x, weight, bias, seq_idx)
        ctx.silu = silu
        return conv1d_forward(x, weight, bias, seq_idx, silu)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, seq_idx = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dx, dw, db = conv1d_backward(dout, x, weight, bias, seq_idx, ctx.silu)
        return dx, dw, db, None, None


def causal_conv1d(x, weight, bias=None, seq_idx=None, activation: str | None = "silu"):
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
    if seq_idx is not None and seq_idx.stride(-1) != 1:
        seq_idx = seq_idx.contiguous()
    return _CausalConv1d.apply(x, weight, bias, seq_idx, activation == "silu")
