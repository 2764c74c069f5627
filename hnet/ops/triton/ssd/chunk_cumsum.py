"""Step 1 of the SSD scan: per chunk, dA_cumsum[b, h, c, i] = sum_{j <= i} dt_j A_h.

dt (b, l, h) -> dt_chunked, dA_cumsum (b, h, c, Q) float32; steps past l get dt = 0 (no decay, no input),
so a last, partial chunk needs no other special case downstream.

`chunk_cumsum_bwd` ends the backward: it pushes the gradient on the cumulative sums into ddt and dA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["l", "n_chunks"])
def _chunk_cumsum(DT, A, DT_OUT, CS, l, h, n_chunks, stride_db, stride_dl, stride_dh,
                  Q: tl.constexpr, BLOCK_H: tl.constexpr):
    b, c = tl.program_id(0), tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    t = c * Q + tl.arange(0, Q)
    live = (heads < h)[:, None] & (t < l)[None, :]
    dt = tl.load(DT + b * stride_db + t[None, :] * stride_dl + heads[:, None] * stride_dh, mask=live, other=0.0).to(tl.float32)
    a = tl.load(A + heads, mask=heads < h, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * a[:, None], axis=1)
    out = ((b * h + heads[:, None]) * n_chunks + c) * Q + tl.arange(0, Q)[None, :]
    tl.store(DT_OUT + out, dt, mask=(heads < h)[:, None])
    tl.store(CS + out, cs, mask=(heads < h)[:, None])


def chunk_cumsum(dt, A, chunk_size: int):
    b, l, h = dt.shape
    n_chunks = triton.cdiv(l, chunk_size)
    dt_out = torch.empty(b, h, n_chunks, chunk_size, device=dt.device, dtype=torch.float32)
    cs = torch.empty_like(dt_out)
    block_h = min(triton.next_power_of_2(h), max(1, 2048 // chunk_size))
    grid = (b, n_chunks, triton.cdiv(h, block_h))
    _chunk_cumsum[grid](dt, A, dt_out, cs, l, h, n_chunks, *dt.stride(), Q=chunk_size, BLOCK_H=block_h)
    return dt_out, cs


@triton.jit(do_not_specialize=["l", "n_chunks"])
def _chunk_cumsum_bwd(DS, DS2, DDT_PART, DDT_PART2, DT, DS_LAST, DS_LAST2, A, DDT, DA, l, h, n_chunks,
                      stride_db, stride_dl, stride_dh, Q: tl.constexpr, BLOCK_H: tl.constexpr):
    """ds, ddt_part and ds_last each arrive as two parts (made by different kernels), added here.
    ds_i = ds_row_i - dt_i ddt_part_i (+ ds_last at the chunk's last step): every term of the backward that
    holds exp(cs_i - cs_j) gives +t at i and -t at j, and t_j = dt_j times its share of ddt_j. Then the
    cumulative sum's backward, a reversed cumulative sum: ddt_i += A d(dt A)_i, dA += dt_i d(dt A)_i."""
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
    tl.store(DDT + b * stride_db + t[None, :] * stride_dl + heads[:, None] * stride_dh, ddt_part + a[:, None] * d_dta,
             mask=h_live[:, None] & (t < l)[None, :])
    tl.store(DA + (b * n_chunks + c) * h + heads, tl.sum(d_dta * dt, axis=1), mask=h_live)


def chunk_cumsum_bwd(ds, ddt_part, dt_chunked, ds_last, A, seqlen: int):
    """(ddt (b, l, h), dA (h,)) float32 from ds and ddt_part (b, h, c, Q) and ds_last (b, h, c), each a pair
    of contiguous float32 tensors whose sum is meant."""
    b, h, n_chunks, Q = ds[0].shape
    if not all(t.is_contiguous() for t in (*ds, *ddt_part, *ds_last)):
        raise ValueError("chunk_cumsum_bwd: its float32 parts must be contiguous")
    ddt = torch.empty(b, seqlen, h, device=dt_chunked.device, dtype=torch.float32)
    da = torch.empty(b, n_chunks, h, device=dt_chunked.device, dtype=torch.float32)
    block_h = min(triton.next_power_of_2(h), max(1, 2048 // Q))
    grid = (b, n_chunks, triton.cdiv(h, block_h))
    _chunk_cumsum_bwd[grid](*ds, *ddt_part, dt_chunked, *ds_last, A, ddt, da, seqlen, h, n_chunks, *ddt.stride(),
                            Q=Q, BLOCK_H=block_h)
    return ddt, da.sum((0, 1))
