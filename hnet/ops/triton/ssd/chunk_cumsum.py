"""Step 1 of the SSD scan: per chunk, dA_cumsum[b, h, c, i] = sum_{j <= i} dt_j A_h.

dt (b, l, h) -> dt_chunked, dA_cumsum (b, h, c, Q) float32; steps past l get dt = 0 (no decay, no input),
so a last, partial chunk needs no other special case downstream. With dt_bias (h,) and softplus, the dt
taken is softplus(dt + dt_bias) (identity above 20, as torch's softplus), computed here from the raw
projection (Mamba-2's fused mixer reads it in place from in_proj's output).

`chunk_cumsum_bwd` ends the backward: it pushes the gradient on the cumulative sums into ddt and dA (and,
for a raw dt, through the softplus into dt and dt_bias).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2

SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # torch's default: softplus(v) = v above it (a constexpr: kernels read no other globals)


@triton.jit
def softplus(v):
    """log(1 + exp(v)), accurate where exp(v) is tiny (log of 1 + u loses u's low bits: times u / (w - 1)
    with w = 1 + u rounded, Goldberg's correction, as log1p does), v itself above the threshold."""
    u = tl.exp(tl.minimum(v, SOFTPLUS_THRESHOLD))
    w = 1.0 + u
    log1p_u = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))
    return tl.where(v > SOFTPLUS_THRESHOLD, v, log1p_u)


@triton.jit
def _raw_dt(DT, DT_BIAS, b, t, heads, h, live, stride_db, stride_dl, stride_dh,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The dt a step takes (float32, zero where not live) and, for the softplus' backward, v = dt + dt_bias."""
    v = tl.load(DT + b * stride_db + t[None, :] * stride_dl + heads[:, None] * stride_dh, mask=live, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(DT_BIAS + heads, mask=heads < h, other=0.0).to(tl.float32)[:, None]
    dt = v
    if SOFTPLUS:
        dt = softplus(v)
    return tl.where(live, dt, 0.0), v


@triton.jit(do_not_specialize=["l", "n_chunks", "stride_db"])  # dt's batch stride: l times its row stride
def _chunk_cumsum(DT, DT_BIAS, A, DT_OUT, CS, l, h, n_chunks, stride_db, stride_dl, stride_dh,
                  Q: tl.constexpr, BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    b, c = tl.program_id(0), tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    t = c * Q + tl.arange(0, Q)
    live = (heads < h)[:, None] & (t < l)[None, :]
    dt, _ = _raw_dt(DT, DT_BIAS, b, t, heads, h, live, stride_db, stride_dl, stride_dh, HAS_BIAS, SOFTPLUS)
    a = tl.load(A + heads, mask=heads < h, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * a[:, None], axis=1)
    out = ((b * h + heads[:, None]) * n_chunks + c) * Q + tl.arange(0, Q)[None, :]
    tl.store(DT_OUT + out, dt, mask=(heads < h)[:, None])
    tl.store(CS + out, cs, mask=(heads < h)[:, None])


def chunk_cumsum(dt, A, chunk_size: int, dt_bias=None, softplus: bool = False):
    b, l, h = dt.shape
    n_chunks = cdiv(l, chunk_size)
    dt_out = torch.empty(b, h, n_chunks, chunk_size, device=dt.device, dtype=torch.float32)
    cs = torch.empty_like(dt_out)
    block_h = min(next_power_of_2(h), max(1, 2048 // chunk_size))
    grid = (b, n_chunks, cdiv(h, block_h))
    _chunk_cumsum[grid](dt, dt_bias, A, dt_out, cs, l, h, n_chunks, *dt.stride(), Q=chunk_size, BLOCK_H=block_h,
                        HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus)
    return dt_out, cs


@triton.jit(do_not_specialize=["l", "n_chunks", "stride_db", "stride_rb"])
def _chunk_cumsum_bwd(DS, DS2, DDT_PART, DDT_PART2, DT, DS_LAST, DS_LAST2, A, DDT, DA, DT_RAW, DT_BIAS, DDT_BIAS,
                      l, h, n_chunks, stride_db, stride_dl, stride_dh, stride_rb, stride_rl, stride_rh,
                      Q: tl.constexpr, BLOCK_H: tl.constexpr, RAW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """ds, ddt_part and ds_last each arrive as two parts (made by different kernels), added here.
    ds_i = ds_row_i - dt_i ddt_part_i (+ ds_last at the chunk's last step): every term of the backward that
    holds exp(cs_i - cs_j) gives +t at i and -t at j, and t_j = dt_j times its share of ddt_j. Then the
    cumulative sum's backward, a reversed cumulative sum: ddt_i += A d(dt A)_i, dA += dt_i d(dt A)_i.
    RAW: the forward took dt = softplus(v), v = dt_raw + dt_bias: ddt goes on through softplus' derivative,
    sigmoid(v) (1 above the threshold), and its sum over the chunk is this chunk's share of d dt_bias."""
    b, c = tl.program_id(0), tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    q = tl.arange(0, Q)
    h_live = heads < h
    base = ((b * h + heads[:, None]) * n_chunks + c) * Q + q[None, :]
    live = h_live[:, None]
    ddt_part = tl.load(DDT_PART + base, mask=live, other=0.0) + tl.load(DDT_PART2 + base, mask=live, other=0.0)
    dt = tl.load(DT + base, mask=live, other=0.0)
    ds = tl.load(DS + base, mask=live, other=0.0) + tl.load(DS2 + base, mask=live, other=0.0) - dt * ddt_part
    last = (b * h + heads) * n_chunks + c
    ds_last = tl.load(DS_LAST + last, mask=h_live, other=0.0) + tl.load(DS_LAST2 + last, mask=h_live, other=0.0)
    ds += tl.where(q[None, :] == Q - 1, ds_last[:, None], 0.0)
    d_dta = tl.cumsum(ds, axis=1, reverse=True)
    a = tl.load(A + heads, mask=h_live, other=0.0).to(tl.float32)
    t = c * Q + q
    in_seq = h_live[:, None] & (t < l)[None, :]
    ddt = ddt_part + a[:, None] * d_dta
    if RAW:
        _, v = _raw_dt(DT_RAW, DT_BIAS, b, t, heads, h, in_seq, stride_rb, stride_rl, stride_rh, HAS_BIAS, False)
        ddt = tl.where(v > SOFTPLUS_THRESHOLD, ddt, ddt * tl.sigmoid(v))
        if HAS_BIAS:
            tl.store(DDT_BIAS + (b * n_chunks + c) * h + heads, tl.sum(tl.where(in_seq, ddt, 0.0), axis=1), mask=h_live)
    tl.store(DDT + b * stride_db + t[None, :] * stride_dl + heads[:, None] * stride_dh, ddt, mask=in_seq)
    tl.store(DA + (b * n_chunks + c) * h + heads, tl.sum(d_dta * dt, axis=1), mask=h_live)


def chunk_cumsum_bwd(ds, ddt_part, dt_chunked, ds_last, A, seqlen: int, dt_raw=None, dt_bias=None, out=None):
    """(ddt (b, l, h), dA (h,) float32, d dt_bias (h,) float32 or None) from ds and ddt_part (b, h, c, Q) and
    ds_last (b, h, c), each a pair of contiguous float32 tensors whose sum is meant. With dt_raw (the
    forward's dt and dt_bias, taken through softplus), ddt is dt_raw's gradient, else dt_chunked's. out: a
    (b, l, h) tensor of any strides and dtype to write ddt into (else a new float32 one)."""
    b, h, n_chunks, Q = ds[0].shape
    if not all(t.is_contiguous() for t in (*ds, *ddt_part, *ds_last)):
        raise ValueError("chunk_cumsum_bwd: its float32 parts must be contiguous")
    ddt = torch.empty(b, seqlen, h, device=dt_chunked.device, dtype=torch.float32) if out is None else out
    da = torch.empty(b, n_chunks, h, device=dt_chunked.device, dtype=torch.float32)
    has_bias = dt_raw is not None and dt_bias is not None
    ddt_bias = torch.empty(b, n_chunks, h, device=dt_chunked.device, dtype=torch.float32) if has_bias else None
    raw_strides = dt_raw.stride() if dt_raw is not None else (0, 0, 0)
    block_h = min(next_power_of_2(h), max(1, 2048 // Q))
    grid = (b, n_chunks, cdiv(h, block_h))
    _chunk_cumsum_bwd[grid](*ds, *ddt_part, dt_chunked, *ds_last, A, ddt, da, dt_raw, dt_bias, ddt_bias, seqlen, h,
                            n_chunks, *ddt.stride(), *raw_strides, Q=Q, BLOCK_H=block_h, RAW=dt_raw is not None,
                            HAS_BIAS=has_bias)
    return ddt, da.sum((0, 1)), ddt_bias.sum((0, 1)) if has_bias else None
