"""Step 1 of the SSD scan: per chunk, dA_cumsum[b, h, c, i] = sum_{j <= i} dt_j A_h.

dt (b, l, h) -> dt_chunked, dA_cumsum (b, h, c, Q) float32; steps past l get dt = 0 (no decay, no input),
so a last, partial chunk needs no other special case downstream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
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
