"""Step 2 of the SSD scan: the state each chunk adds by its end,
states[b, c, h] = sum_j exp(cs_last - cs_j) dt_j x_j B_j^T over the steps j of the sequence live at the
chunk's end. Also CB[b, c, g, i, j] = C_i . B_j (j <= i), which step 4 shares across a group's heads.

x (b, l, h, p), B and C (b, l, g, n) with any strides; states (b, c, h, p, n) and CB float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _chunk_state(X, B, DT, CS, SEQ, STATES, l, h, n_chunks, p_dim, n_dim, heads_per_group,
                 sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, s_seq,
                 Q: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n_blocks_n = tl.cdiv(n_dim, BLOCK_N)
    rows = (tl.program_id(0) // n_blocks_n) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = (tl.program_id(0) % n_blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    b, c, hd = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
    grp = hd // heads_per_group
    chunk_base = ((b * h + hd) * n_chunks + c) * Q
    cs_last = tl.load(CS + chunk_base + Q - 1)
    if HAS_SEQ:
        seq_last = tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1))
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, Q, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)
        t = c * Q + j
        x = tl.load(X + b * sxb + t[None, :] * sxl + hd * sxh + rows[:, None] * sxp,
                    mask=(rows < p_dim)[:, None] & (t < l)[None, :], other=0.0)  # (P, K)
        bm = tl.load(B + b * sbb + t[:, None] * sbl + grp * sbg + cols[None, :] * sbn,
                     mask=(t < l)[:, None] & (cols < n_dim)[None, :], other=0.0)  # (K, N)
        w = tl.exp(cs_last - tl.load(CS + chunk_base + j)) * tl.load(DT + chunk_base + j)
        if HAS_SEQ:
            w = tl.where(tl.load(SEQ + b * s_seq + t, mask=t < l, other=-1) == seq_last, w, 0.0)
        bw = (bm.to(tl.float32) * w[:, None]).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, bw, input_precision="ieee")
        else:
            acc += tl.dot(x, bw)
    out = (((b * n_chunks + c) * h + hd) * p_dim + rows[:, None]) * n_dim + cols[None, :]
    tl.store(STATES + out, acc, mask=(rows < p_dim)[:, None] & (cols < n_dim)[None, :])


@triton.jit
def _chunk_cb(B, C, CB, l, g, n_chunks, n_dim, sbb, sbl, sbg, sbn, scb, scl, scg, scn,
              Q: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_N: tl.constexpr):
    n_blocks_k = Q // BLOCK_K
    i0, j0 = (tl.program_id(0) // n_blocks_k) * BLOCK_M, (tl.program_id(0) % n_blocks_k) * BLOCK_K
    if j0 < i0 + BLOCK_M:  # blocks wholly above the diagonal are never read
        b, c, grp = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
        ti = c * Q + i0 + tl.arange(0, BLOCK_M)
        tj = c * Q + j0 + tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for n0 in range(0, n_dim, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            cm = tl.load(C + b * scb + ti[:, None] * scl + grp * scg + n[None, :] * scn,
                         mask=(ti < l)[:, None] & (n < n_dim)[None, :], other=0.0)
            bt = tl.load(B + b * sbb + tj[None, :] * sbl + grp * sbg + n[:, None] * sbn,
                         mask=(tj < l)[None, :] & (n < n_dim)[:, None], other=0.0)
            if IEEE:
                acc += tl.dot(cm, bt, input_precision="ieee")
            else:
                acc += tl.dot(cm, bt)
        out = ((b * n_chunks + c) * g + grp) * Q * Q + (i0 + tl.arange(0, BLOCK_M))[:, None] * Q + (j0 + tl.arange(0, BLOCK_K))[None, :]
        tl.store(CB + out, acc)


def dot_block(dim: int, cap: int) -> int:
    """A block size for a tl.dot dimension: a power of 2 covering dim, at most cap, at least 16 (its minimum)."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def chunk_state(x, B, dt_chunked, cs, seq_idx=None):
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    states = torch.empty(b, n_chunks, h, p, n, device=x.device, dtype=torch.float32)
    # tl.dot wants every dimension >= 16: small heads and states are padded with masked lanes.
    block_p, block_n, block_k = dot_block(p, 64), dot_block(n, 128), min(64, Q)
    grid = (triton.cdiv(p, block_p) * triton.cdiv(n, block_n), b * n_chunks, h)
    _chunk_state[grid](x, B, dt_chunked, cs, seq_idx, states, l, h, n_chunks, p, n, h // g,
                       *x.stride(), *B.stride(), seq_idx.stride(0) if seq_idx is not None else 0,
                       Q=Q, HAS_SEQ=seq_idx is not None, IEEE=x.dtype == torch.float32,
                       BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return states


def chunk_cb(B, C, chunk_size: int):
    b, l, g, n = B.shape
    n_chunks = triton.cdiv(l, chunk_size)
    cb = torch.zeros(b, n_chunks, g, chunk_size, chunk_size, device=B.device, dtype=torch.float32)
    block_m = block_k = min(64, chunk_size)
    block_n = dot_block(n, 64)
    grid = ((chunk_size // block_m) * (chunk_size // block_k), b * n_chunks, g)
    _chunk_cb[grid](B, C, cb, l, g, n_chunks, n, *B.stride(), *C.stride(), Q=chunk_size,
                    IEEE=B.dtype == torch.float32, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4)
    return cb
