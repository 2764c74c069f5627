"""The dechunk EMA, e_t = p_t x_t + (1 - p_t) e_{t-1}, reset at every packed sequence, forward and
backward; equals `hnet.ops.ema.ema_scan` (float32 math and output). x (b, m, d), p (b, m), seq_idx (b, m).

Memory-bound, so the kernel is a plain scan: a program per (row, channel block, segment of time) walks
its segment in tiles of BLOCK_T steps, each tile an associative scan of the affine maps e -> a e + u, with
the running value carried from tile to tile. A packed batch is one row, so with too few programs the
time axis is cut into segments (one program per 32 channels walking 21,000 chunks took 1 ms on the H200): a
first pass gives each segment's map from its entering value to its leaving one (a product of decays and
the value from zero), a short sequential pass chains those into each segment's entering value, and the
scan proper starts every segment from it. The backward runs the same three passes in reverse time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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


@triton.jit(do_not_specialize=["m", "seg_len"])
def _ema_fwd(X, P, SEQ, E, CARRY, SUMMARY_A, SUMMARY_U, m, d, seg_len, stride_xb, stride_xm,
             HAS_SEQ: tl.constexpr, HAS_CARRY: tl.constexpr, SUMMARY: tl.constexpr,
             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """The scan of one segment from its entering value (CARRY, else 0); with SUMMARY only the segment's map
    e_out = a e_in + u, written to SUMMARY_A and SUMMARY_U (b, segments, d)."""
    b, seg = tl.program_id(0), tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    summary = (b * tl.num_programs(2) + seg) * d + cols
    if HAS_CARRY:
        carry = tl.load(CARRY + summary, mask=in_d, other=0.0)
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    decay = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    end = tl.minimum(seg * seg_len + seg_len, m)
    for start in range(seg * seg_len, end, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        live = (t < end)[:, None] & in_d[None, :]
        a, p = _decay(P, SEQ, b, t, m, HAS_SEQ)
        x = tl.load(X + b * stride_xb + t[:, None] * stride_xm + cols[None, :], mask=live, other=0.0).to(tl.float32)
        a2 = tl.broadcast_to(tl.where(t < end, a, 1.0)[:, None], (BLOCK_T, BLOCK_D))
        a_cum, u_cum = tl.associative_scan((a2, p[:, None] * x), 0, _compose)
        e = a_cum * carry[None, :] + u_cum
        if not SUMMARY:
            tl.store(E + b * m * d + t[:, None] * d + cols[None, :], e, mask=live)
        last = (t == start + BLOCK_T - 1)[:, None]
        carry = tl.sum(tl.where(last, e, 0.0), axis=0)
        if SUMMARY:
            decay *= tl.sum(tl.where(last, a_cum, 0.0), axis=0)
    if SUMMARY:
        tl.store(SUMMARY_A + summary, decay, mask=in_d)
        tl.store(SUMMARY_U + summary, carry, mask=in_d)


@triton.jit
def _ema_chain(SUMMARY_A, SUMMARY_U, CARRY, d, n_segments, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Each segment's entering value from the segments' maps, in time order (REVERSE: the backward's)."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(n_segments):
        seg = n_segments - 1 - k if REVERSE else k
        at = (b * n_segments + seg) * d + cols
        tl.store(CARRY + at, carry, mask=in_d)
        carry = tl.load(SUMMARY_A + at, mask=in_d, other=0.0) * carry + tl.load(SUMMARY_U + at, mask=in_d, other=0.0)


@triton.jit(do_not_specialize=["m", "seg_len"])
def _ema_bwd(X, P, SEQ, E, DE, DX, DP_PARTIAL, CARRY, SUMMARY_A, SUMMARY_U, m, d, seg_len, stride_xb, stride_xm,
             HAS_SEQ: tl.constexpr, HAS_CARRY: tl.constexpr, SUMMARY: tl.constexpr,
             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """The adjoint g_t = de_t + a_{t+1} g_{t+1} runs backwards in time over one segment, from the value that
    enters it from the next (CARRY, else 0); then dx_t = p_t g_t and dp_t = sum_d g_t (x_t - [same sequence]
    e_{t-1}). With SUMMARY only the segment's map, as in _ema_fwd."""
    b, seg = tl.program_id(0), tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < d
    summary = (b * tl.num_programs(2) + seg) * d + cols
    if HAS_CARRY:
        carry = tl.load(CARRY + summary, mask=in_d, other=0.0)  # g at the first step of the tile after this one
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    decay = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    first = seg * seg_len
    end = tl.minimum(first + seg_len, m)
    n_tiles = tl.cdiv(end - first, BLOCK_T)
    for i in range(n_tiles):
        start = first + (n_tiles - 1 - i) * BLOCK_T
        t = start + tl.arange(0, BLOCK_T)
        live = (t < end)[:, None] & in_d[None, :]
        a_next, _ = _decay(P, SEQ, b, t + 1, m, HAS_SEQ)
        de = tl.load(DE + b * m * d + t[:, None] * d + cols[None, :], mask=live, other=0.0).to(tl.float32)
        a2 = tl.broadcast_to(tl.where(t < end, a_next, 1.0)[:, None], (BLOCK_T, BLOCK_D))
        a_cum, u_cum = tl.associative_scan((a2, de), 0, _compose, reverse=True)
        g = a_cum * carry[None, :] + u_cum
        here = (t == start)[:, None]
        carry = tl.sum(tl.where(here, g, 0.0), axis=0)
        if SUMMARY:
            decay *= tl.sum(tl.where(here, a_cum, 0.0), axis=0)
        else:
            a, p = _decay(P, SEQ, b, t, m, HAS_SEQ)
            x = tl.load(X + b * stride_xb + t[:, None] * stride_xm + cols[None, :], mask=live, other=0.0).to(tl.float32)
            e_prev = tl.load(E + b * m * d + (t - 1)[:, None] * d + cols[None, :], mask=live & (t >= 1)[:, None],
                             other=0.0)
            # a_t = (1 - p_t) * same_t, so da_t/dp_t = -same_t; a_t > 0 tells same_t as p < 1.
            e_prev = tl.where((a > 0)[:, None], e_prev, 0.0)
            tl.store(DX + b * m * d + t[:, None] * d + cols[None, :], p[:, None] * g, mask=live)
            dp = tl.sum(g * (x - e_prev), axis=1)
            tl.store(DP_PARTIAL + (tl.program_id(1) * tl.num_programs(0) + b) * m + t, dp, mask=t < end)
    if SUMMARY:
        tl.store(SUMMARY_A + summary, decay, mask=in_d)
        tl.store(SUMMARY_U + summary, carry, mask=in_d)


BLOCK_T, BLOCK_D = 32, 32
MIN_PROGRAMS = 264  # two per multiprocessor of an H100/H200: below, the time axis is cut into segments


def _segments(b: int, m: int, d: int) -> tuple[int, int]:
    """(segment length, a multiple of BLOCK_T; number of segments)."""
    wanted = min(triton.cdiv(MIN_PROGRAMS, b * triton.cdiv(d, BLOCK_D)), triton.cdiv(m, BLOCK_T))
    seg_len = max(triton.cdiv(triton.cdiv(m, max(wanted, 1)), BLOCK_T), 1) * BLOCK_T
    return seg_len, triton.cdiv(m, seg_len)


def _scan(kernel, b, m, d, *args, has_seq):
    """Launch kernel (_ema_fwd or _ema_bwd, whose leading arguments are args) over segments: the summary
    pass and the chaining first when there is more than one."""
    seg_len, n_seg = _segments(b, m, d)
    grid = (b, triton.cdiv(d, BLOCK_D), n_seg)
    opts = dict(HAS_SEQ=has_seq, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
    carry = None
    if n_seg > 1:
        dev = args[0].device
        summary_a, summary_u, carry = (torch.empty(b, n_seg, d, device=dev, dtype=torch.float32) for _ in range(3))
        kernel[grid](*args, None, summary_a, summary_u, m, d, seg_len, *args[0].stride()[:2],
                     HAS_CARRY=False, SUMMARY=True, **opts)
        _ema_chain[grid[:2]](summary_a, summary_u, carry, d, n_seg, REVERSE=kernel is _ema_bwd, BLOCK_D=BLOCK_D)
    kernel[grid](*args, carry, None, None, m, d, seg_len, *args[0].stride()[:2],
                 HAS_CARRY=carry is not None, SUMMARY=False, **opts)


class _EmaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seq_idx):
        if x.stride(-1) != 1:
            x = x.contiguous()
        b, m, d = x.shape
        p = p.float().contiguous()
        e = torch.empty(b, m, d, device=x.device, dtype=torch.float32)
        _scan(_ema_fwd, b, m, d, x, p, seq_idx, e, has_seq=seq_idx is not None)
        ctx.save_for_backward(x, p, seq_idx, e)
        ctx.x_dtype = x.dtype
        return e

    @staticmethod
    def backward(ctx, de):
        x, p, seq_idx, e = ctx.saved_tensors
        b, m, d = x.shape
        dx = torch.empty(b, m, d, device=x.device, dtype=ctx.x_dtype)
        dp_partial = torch.empty(triton.cdiv(d, BLOCK_D), b, m, device=x.device, dtype=torch.float32)
        _scan(_ema_bwd, b, m, d, x, p, seq_idx, e, de.contiguous(), dx, dp_partial, has_seq=seq_idx is not None)
        return dx, dp_partial.sum(0), None


def ema_scan(x, p, seq_idx=None, chunk_size: int = 64):
    """`chunk_size` belongs to the reference's chunked form; the scan here needs none."""
    if seq_idx is not None:
        seq_idx = seq_idx.contiguous()
    return _EmaScan.apply(x, p, seq_idx)
