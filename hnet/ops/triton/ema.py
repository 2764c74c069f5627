"""The dechunk EMA, e_t = p_t x_t + (1 - p_t) e_{t-1}, reset at every packed sequence, forward and
backward; equals `hnet.ops.ema.ema_scan` (float32 math and output). x (b, m, d), p (b, m), seq_idx (b, m).

Memory-bound, so the kernel is a plain scan: one program per (row, channel block) walks the time axis
in tiles of BLOCK_T steps, each tile an associative scan of the affine maps e -> a e + u, with the
running value carried from tile to tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv


@triton.jit
def _compose(a_first, u_first, a_then, u_then):
    """(e -> a_then (a_first e + u_first) + u_then) as one affine map."""
    return a_first * a_then, a_then * u_first + u_then


@triton.jit
def _decay(P, SEQ, b, t, m, HAS_SEQ: tl.constexpr):
    """a_t = 1 - p_t, or 0 where t starts a new packed sequence; 0 outside [0, m) too."""
    p = tl.load(P + b * m + t, mask=(t >= 0) & (t < m), other=1.0)
    a = 1.0 - p
    if HAS_SEQ:
        here = tl.load(SEQ + b * m + t, mask=(t >= 0) & (t < m), other=-1)
        before = tl.load(SEQ + b * m + t - 1, mask=(t >= 1) & (t < m), other=-2)
        a = tl.where(here == before, a, 0.0)
    return a, p


@triton.jit(do_not_specialize=["m"])
def _ema_fwd(X, P, SEQ, E, m, d, stride_xb, stride_xm,
             HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, m, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        live = (t < m)[:, None] & in_d[None, :]
        a, p = _decay(P, SEQ, b, t, m, HAS_SEQ)
        x = tl.load(X + b * stride_xb + t[:, None] * stride_xm + cols[None, :], mask=live, other=0.0).to(tl.float32)
        a2 = tl.broadcast_to(a[:, None], (BLOCK_T, BLOCK_D))
        a_cum, u_cum = tl.associative_scan((a2, p[:, None] * x), 0, _compose)
        e = a_cum * carry[None, :] + u_cum
        tl.store(E + b * m * d + t[:, None] * d + cols[None, :], e, mask=live)
        carry = tl.sum(tl.where((t == start + BLOCK_T - 1)[:, None], e, 0.0), axis=0)


@triton.jit(do_not_specialize=["m"])
def _ema_bwd(X, P, SEQ, E, DE, DX, DP_PARTIAL, m, d, stride_xb, stride_xm,
             HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """The adjoint g_t = de_t + a_{t+1} g_{t+1} runs backwards in time; then dx_t = p_t g_t and
    dp_t = sum_d g_t (x_t - [same sequence] e_{t-1})."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)  # g at the first step of the tile after this one
    n_tiles = tl.cdiv(m, BLOCK_T)
    for i in range(n_tiles):
        start = (n_tiles - 1 - i) * BLOCK_T
        t = start + tl.arange(0, BLOCK_T)
        live = (t < m)[:, None] & in_d[None, :]
        a_next, _ = _decay(P, SEQ, b, t + 1, m, HAS_SEQ)
        de = tl.load(DE + b * m * d + t[:, None] * d + cols[None, :], mask=live, other=0.0).to(tl.float32)
        a2 = tl.broadcast_to(a_next[:, None], (BLOCK_T, BLOCK_D))
        a_cum, u_cum = tl.associative_scan((a2, de), 0, _compose, reverse=True)
        g = a_cum * carry[None, :] + u_cum
        carry = tl.sum(tl.where((t == start)[:, None], g, 0.0), axis=0)

        a, p = _decay(P, SEQ, b, t, m, HAS_SEQ)
        x = tl.load(X + b * stride_xb + t[:, None] * stride_xm + cols[None, :], mask=live, other=0.0).to(tl.float32)
        e_prev = tl.load(E + b * m * d + (t - 1)[:, None] * d + cols[None, :], mask=live & (t >= 1)[:, None], other=0.0)
        # a_t = (1 - p_t) * same_t, so da_t/dp_t = -same_t; a_t > 0 tells same_t as p < 1.
        e_prev = tl.where((a > 0)[:, None], e_prev, 0.0)
        tl.store(DX + b * m * d + t[:, None] * d + cols[None, :], p[:, None] * g, mask=live)
        dp = tl.sum(g * (x - e_prev), axis=1)
        tl.store(DP_PARTIAL + (tl.program_id(1) * tl.num_programs(0) + b) * m + t, dp, mask=t < m)


BLOCK_T, BLOCK_D = 32, 32


class _EmaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seq_idx):
        if x.stride(-1) != 1:
            x = x.contiguous()
        b, m, d = x.shape
        p = p.float().contiguous()
        e = torch.empty(b, m, d, device=x.device, dtype=torch.float32)
        grid = (b, cdiv(d, BLOCK_D))
        _ema_fwd[grid](x, p, seq_idx, e, m, d, x.stride(0), x.stride(1),
                       HAS_SEQ=seq_idx is not None, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        ctx.save_for_backward(x, p, seq_idx, e)
        ctx.x_dtype = x.dtype
        return e

    @staticmethod
    def backward(ctx, de):
        x, p, seq_idx, e = ctx.saved_tensors
        b, m, d = x.shape
        grid = (b, cdiv(d, BLOCK_D))
        dx = torch.empty(b, m, d, device=x.device, dtype=ctx.x_dtype)
        dp_partial = torch.empty(grid[1], b, m, device=x.device, dtype=torch.float32)
        _ema_bwd[grid](x, p, seq_idx, e, de.contiguous(), dx, dp_partial, m, d, x.stride(0), x.stride(1),
                       HAS_SEQ=seq_idx is not None, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        return dx, dp_partial.sum(0), None


def ema_scan(x, p, seq_idx=None, chunk_size: int = 64):
    """`chunk_size` belongs to the reference's chunked form; the scan here needs none."""
    if seq_idx is not None:
        seq_idx = seq_idx.contiguous()
    return _EmaScan.apply(x, p, seq_idx)
