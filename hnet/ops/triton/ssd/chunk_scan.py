"""Step 4 of the SSD scan, the output:
y_i = exp(cs_i) [i in the entering sequence] C_i states_in
      + sum_{j <= i, same sequence} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j + D x_i.

x (b, l, h, p), C (b, l, g, n), CB (b, c, g, Q, Q), states_in (b, c, h, p, n) -> y (b, l, h, p) in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.ssd.chunk_state import dot_block


@triton.jit
def _chunk_scan(X, C, CB, DT, CS, SEQ, STATES_IN, D, Y, l, h, g, n_chunks, p_dim, n_dim, heads_per_group,
                sxb, sxl, sxh, sxp, scb, scl, scg, scn, syb, syl, syh, syp, s_seq,
                Q: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    n_blocks_p = tl.cdiv(p_dim, BLOCK_P)
    i0 = (tl.program_id(0) // n_blocks_p) * BLOCK_M
    i = i0 + tl.arange(0, BLOCK_M)
    cols = (tl.program_id(0) % n_blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    b, c, hd = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
    grp = hd // heads_per_group
    t = c * Q + i
    chunk_base = ((b * h + hd) * n_chunks + c) * Q
    cs_i = tl.load(CS + chunk_base + i)
    if HAS_SEQ:
        seq_i = tl.load(SEQ + b * s_seq + t, mask=t < l, other=-1)

    # The entering state, seen through C_i and decayed to step i.
    n = tl.arange(0, BLOCK_N)
    cm = tl.load(C + b * scb + t[:, None] * scl + grp * scg + n[None, :] * scn,
                 mask=(t < l)[:, None] & (n < n_dim)[None, :], other=0.0)  # (M, N)
    s_in = tl.load(STATES_IN + (((b * n_chunks + c) * h + hd) * p_dim + cols[None, :]) * n_dim + n[:, None],
                   mask=(n < n_dim)[:, None] & (cols < p_dim)[None, :], other=0.0)  # (N, P)
    if IEEE:
        acc = tl.dot(cm, s_in, input_precision="ieee")
    else:
        acc = tl.dot(cm, s_in.to(cm.dtype))
    scale = tl.exp(cs_i)
    if HAS_SEQ:
        entering_seq = tl.load(SEQ + b * s_seq + tl.maximum(c * Q - 1, 0))
        scale = tl.where(seq_i == entering_seq, scale, 0.0)
    acc = acc * scale[:, None]

    # Within the chunk, blocks of steps j up to the diagonal.
    cb_base = ((b * n_chunks + c) * g + grp) * Q * Q
    for j0 in range(0, i0 + BLOCK_M, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        tj = c * Q + j
        cb = tl.load(CB + cb_base + i[:, None] * Q + j[None, :])
        cs_j = tl.load(CS + chunk_base + j)
        dt_j = tl.load(DT + chunk_base + j)
        keep = j[None, :] <= i[:, None]
        if HAS_SEQ:
            keep &= tl.load(SEQ + b * s_seq + tj, mask=tj < l, other=-2)[None, :] == seq_i[:, None]
        # exp only where kept: above the diagonal cs_i - cs_j > 0 could overflow.
        scores = tl.where(keep, cb * tl.exp(tl.where(keep, cs_i[:, None] - cs_j[None, :], 0.0)) * dt_j[None, :], 0.0)
        xj = tl.load(X + b * sxb + tj[:, None] * sxl + hd * sxh + cols[None, :] * sxp,
                     mask=(tj < l)[:, None] & (cols < p_dim)[None, :], other=0.0)  # (K, P)
        if IEEE:
            acc += tl.dot(scores, xj, input_precision="ieee")
        else:
            acc += tl.dot(scores.to(xj.dtype), xj)

    live = (t < l)[:, None] & (cols < p_dim)[None, :]
    if HAS_D:
        xi = tl.load(X + b * sxb + t[:, None] * sxl + hd * sxh + cols[None, :] * sxp, mask=live, other=0.0)
        acc += xi.to(tl.float32) * tl.load(D + hd).to(tl.float32)
    tl.store(Y + b * syb + t[:, None] * syl + hd * syh + cols[None, :] * syp, acc, mask=live)


def chunk_scan(x, C, cb, dt_chunked, cs, states_in, D=None, seq_idx=None):
    b, l, h, p = x.shape
    g, n = C.shape[2], C.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    y = torch.empty(b, l, h, p, device=x.device, dtype=x.dtype)
    block_m, block_k = min(64, Q), min(64, Q)
    block_p, block_n = dot_block(p, 64), dot_block(n, n)  # the whole state at once
    grid = ((Q // block_m) * triton.cdiv(p, block_p), b * n_chunks, h)
    _chunk_scan[grid](x, C, cb, dt_chunked, cs, seq_idx, states_in, D, y, l, h, g, n_chunks, p, n, h // g,
                      *x.stride(), *C.stride(), *y.stride(), seq_idx.stride(0) if seq_idx is not None else 0,
                      Q=Q, HAS_SEQ=seq_idx is not None, HAS_D=D is not None, IEEE=x.dtype == torch.float32,
                      BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4)
    return y
