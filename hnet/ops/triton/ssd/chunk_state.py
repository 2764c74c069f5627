"""Step 2 of the SSD scan: the state each chunk adds by its end,
states[b, c, h] = sum_j exp(cs_last - cs_j) dt_j x_j B_j^T over the steps j of the sequence live at the
chunk's end. Also CB[b, c, g, i, j] = C_i . B_j (j <= i), which step 4 shares across a group's heads.

x (b, l, h, p), B and C (b, l, g, n) with any strides; states (b, c, h, p, n) and CB float32.

The backward has two pieces here: `state_grad_from_output`, the same kernel weighted from the chunk's
start (the gradient that y puts on the entering state), and `chunk_state_bwd_db`, dB from the state's
gradient and from the gradient on C.B (`chunk_scan_bwd_dcb`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2
from hnet.ops.triton.tuning import for_dtype, launch_fastest


@triton.jit
def mm(a, b, IEEE: tl.constexpr):
    """tl.dot of two same-dtype tiles, float32 accumulation; exact float32 products when IEEE (fp32 inputs)."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _chunk_state(X, B, DT, CS, SEQ, STATES, l, h, n_chunks, p_dim, n_dim, heads_per_group,
                 sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, s_seq,
                 Q: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr, FROM_START: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum_j w_j X_j^T B_j per chunk. w_j = exp(cs_last - cs_j) dt_j [j in the last step's sequence] (the
    state added by the chunk's end), or with FROM_START w_j = exp(cs_j) [j in the entering sequence]
    (with X = dy and B = C: the gradient of y through C_j exp(cs_j) states_in)."""
    n_blocks_n = tl.cdiv(n_dim, BLOCK_N)
    rows = (tl.program_id(0) // n_blocks_n) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = (tl.program_id(0) % n_blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    b, c, hd = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
    grp = hd // heads_per_group
    chunk_base = ((b * h + hd) * n_chunks + c) * Q
    cs_last = tl.load(CS + chunk_base + Q - 1)
    if HAS_SEQ:
        if FROM_START:
            seq_ref = tl.load(SEQ + b * s_seq + tl.maximum(c * Q - 1, 0))
        else:
            seq_ref = tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1))
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, Q, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)
        t = c * Q + j
        x = tl.load(X + b * sxb + t[None, :] * sxl + hd * sxh + rows[:, None] * sxp,
                    mask=(rows < p_dim)[:, None] & (t < l)[None, :], other=0.0)  # (P, K)
        bm = tl.load(B + b * sbb + t[:, None] * sbl + grp * sbg + cols[None, :] * sbn,
                     mask=(t < l)[:, None] & (cols < n_dim)[None, :], other=0.0)  # (K, N)
        if FROM_START:
            w = tl.exp(tl.load(CS + chunk_base + j))
        else:
            w = tl.exp(cs_last - tl.load(CS + chunk_base + j)) * tl.load(DT + chunk_base + j)
        if HAS_SEQ:
            w = tl.where(tl.load(SEQ + b * s_seq + t, mask=t < l, other=-1) == seq_ref, w, 0.0)
        bw = (bm.to(tl.float32) * w[:, None]).to(x.dtype)
        acc += mm(x, bw, IEEE)
    out = (((b * n_chunks + c) * h + hd) * p_dim + rows[:, None]) * n_dim + cols[None, :]
    tl.store(STATES + out, acc, mask=(rows < p_dim)[:, None] & (cols < n_dim)[None, :])


@triton.jit(do_not_specialize=["l", "n_chunks"])
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
            acc += mm(cm, bt, IEEE)
        out = ((b * n_chunks + c) * g + grp) * Q * Q + (i0 + tl.arange(0, BLOCK_M))[:, None] * Q + (j0 + tl.arange(0, BLOCK_K))[None, :]
        tl.store(CB + out, acc)


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _chunk_state_bwd_db(X, C, DCB, DT, CS, SEQ, DSTATES, DB, l, h, g, n_chunks, p_dim, n_dim,
                        heads_per_group, heads_per_program, sxb, sxl, sxh, sxp, scb, scl, scg, scn,
                        so_run, sob, sol, sog, son, s_seq,
                        Q: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """dB_j for a block of steps j, summed over a run of the group's heads (one partial sum per run):
        dB_j = sum_heads W_j dt_j x_j dS_out + sum_{i >= j} dCB_ij C_i   (the second term in run 0 only),
    with dS_out the gradient of the state leaving the chunk, W_j its decay weight (see _chunk_state) and
    dCB from chunk_scan_bwd_dcb. Run r's sum goes to DB + r so_run (so_run 0: a single run writing dB itself)."""
    j0 = tl.program_id(0) * BLOCK_M
    j = j0 + tl.arange(0, BLOCK_M)
    b, c = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks
    grp, run = tl.program_id(2) % g, tl.program_id(2) // g
    lowp = X.dtype.element_ty
    tj = c * Q + j
    pp, nn = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    p_live, n_live = pp < p_dim, nn < n_dim
    if HAS_SEQ:
        in_last = tl.load(SEQ + b * s_seq + tj, mask=tj < l, other=-1) == tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(heads_per_program):
        hd = grp * heads_per_group + run * heads_per_program + k
        chunk_base = ((b * h + hd) * n_chunks + c) * Q
        w = tl.exp(tl.load(CS + chunk_base + Q - 1) - tl.load(CS + chunk_base + j)) * tl.load(DT + chunk_base + j)
        if HAS_SEQ:
            w = tl.where(in_last, w, 0.0)
        xj = tl.load(X + b * sxb + tj[:, None] * sxl + hd * sxh + pp[None, :] * sxp,
                     mask=(tj < l)[:, None] & p_live[None, :], other=0.0)  # (M, P)
        ds_out = tl.load(DSTATES + (((b * n_chunks + c) * h + hd) * p_dim + pp[:, None]) * n_dim + nn[None, :],
                         mask=p_live[:, None] & n_live[None, :], other=0.0)  # (P, N)
        acc += w[:, None] * mm(xj, ds_out.to(lowp), IEEE)
    if run == 0:
        dcb_base = ((b * n_chunks + c) * g + grp) * Q * Q
        for i0 in range(j0, Q, BLOCK_M):  # blocks of steps i at and below the diagonal
            i = i0 + tl.arange(0, BLOCK_M)
            ti = c * Q + i
            dcb_t = tl.load(DCB + dcb_base + i[None, :] * Q + j[:, None], mask=i[None, :] >= j[:, None],
                            other=0.0)  # (M_j, M_i)
            ci = tl.load(C + b * scb + ti[:, None] * scl + grp * scg + nn[None, :] * scn,
                         mask=(ti < l)[:, None] & n_live[None, :], other=0.0)  # (M_i, N)
            acc += mm(dcb_t, ci, IEEE)
    out = DB + run * so_run + b * sob + tj[:, None] * sol + grp * sog + nn[None, :] * son
    tl.store(out, acc, mask=(tj < l)[:, None] & n_live[None, :])


def dot_block(dim: int, cap: int) -> int:
    """A block size for a tl.dot dimension: a power of 2 covering dim, at most cap rounded up to a power of 2
    (cap = dim asks for the whole dimension), at least 16 (tl.dot's minimum)."""
    return max(16, min(next_power_of_2(cap), next_power_of_2(dim)))


def chunk_state(x, B, dt_chunked, cs, seq_idx=None):
    return _launch_chunk_state(x, B, dt_chunked, cs, seq_idx, from_start=False)


def state_grad_from_output(dy, C, cs, seq_idx=None):
    """d(states_in) (b, c, h, p, n) float32 from y alone: sum_i exp(cs_i) [i in the entering sequence] dy_i^T C_i."""
    return _launch_chunk_state(dy, C, None, cs, seq_idx, from_start=True)


def _launch_chunk_state(x, B, dt_chunked, cs, seq_idx, from_start):
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    states = torch.empty(b, n_chunks, h, p, n, device=x.device, dtype=torch.float32)
    # tl.dot wants every dimension >= 16: small heads and states are padded with masked lanes.
    block_p, block_n = dot_block(p, 64), dot_block(n, 128)

    def launch(block_k, **launch_options):
        grid = (cdiv(p, block_p) * cdiv(n, block_n), b * n_chunks, h)
        _chunk_state[grid](x, B, dt_chunked, cs, seq_idx, states, l, h, n_chunks, p, n, h // g,
                           *x.stride(), *B.stride(), seq_idx.stride(0) if seq_idx is not None else 0,
                           Q=Q, HAS_SEQ=seq_idx is not None, IEEE=x.dtype == torch.float32, FROM_START=from_start,
                           BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, **launch_options)

    candidates = [dict(block_k=min(64, Q), num_warps=4)] + [
        dict(block_k=k, num_warps=w, num_stages=s) for k in (32, 64, 128) for w, s in ((4, 2), (8, 3)) if k <= Q]
    launch_fastest("chunk_state", (from_start, Q, p, n, h // g, x.dtype, seq_idx is None), b * l,
                   for_dtype(candidates, x.dtype), launch)
    return states


def chunk_cb(B, C, chunk_size: int):
    b, l, g, n = B.shape
    n_chunks = cdiv(l, chunk_size)
    # Not zeroed: blocks above the diagonal are never written, and every reader masks j > i on load or by select.
    cb = torch.empty(b, n_chunks, g, chunk_size, chunk_size, device=B.device, dtype=torch.float32)

    def launch(block_m, block_n, **launch_options):
        grid = ((chunk_size // block_m) ** 2, b * n_chunks, g)
        _chunk_cb[grid](B, C, cb, l, g, n_chunks, n, *B.stride(), *C.stride(), Q=chunk_size,
                        IEEE=B.dtype == torch.float32, BLOCK_M=block_m, BLOCK_K=block_m, BLOCK_N=block_n,
                        **launch_options)

    candidates = [dict(block_m=min(64, chunk_size), block_n=dot_block(n, 64), num_warps=4)] + [
        dict(block_m=m, block_n=dot_block(n, bn), num_warps=w, num_stages=2)
        for m in (64, 128) for bn in (32, 128) for w in (4, 8) if m <= chunk_size]
    launch_fastest("chunk_cb", (chunk_size, n, B.dtype), b * l, for_dtype(candidates, B.dtype), launch)
    return cb


def head_runs(heads_per_group: int, target: int = 4) -> int:
    """Into how many runs the dB and dC kernels split a group's heads: more programs, fewer partial sums."""
    return max(k for k in range(1, min(target, heads_per_group) + 1) if heads_per_group % k == 0)


def reduction_candidates(Q: int, heads_per_group: int) -> list[dict]:
    """Launch candidates of the dB and dC kernels: the default first, then rows per block, warps, pipeline
    stages and how many runs (partial sums) a group's heads are split into."""
    return [dict(block_m=min(64, Q), runs=head_runs(heads_per_group), num_warps=4)] + [
        dict(block_m=m, runs=head_runs(heads_per_group, r), num_warps=w, num_stages=s)
        for m in (32, 64) for r in (1, 4, 8) for w, s in ((4, 2), (8, 2), (8, 3)) if m <= Q]


def runs_into(out, runs: int, shape, device):
    """Where the dB and dC kernels put their runs' sums: (buffer, its run stride, the (b, l, g, n) strides). A
    single run writes straight into out (rounded to out's dtype once, as a cast of the sum would); more
    runs write float32 partial sums, added up by `sum_runs`."""
    if runs == 1 and out is not None:
        return out, 0, out.stride()
    partials = torch.empty(runs, *shape, device=device, dtype=torch.float32)
    return partials, partials.stride(0), partials.stride()[1:]


def sum_runs(partials, out):
    """The sum of the runs' partial sums (b, l, g, n), written into out where given."""
    if partials is out:
        return out
    total = partials.sum(0) if partials.shape[0] > 1 else partials[0]
    return total if out is None else out.copy_(total)


def chunk_state_bwd_db(x, C, dcb, dt_chunked, cs, dstates, seq_idx=None, out=None):
    """dB (b, l, g, n) float32 given dS_out (b, c, h, p, n), the gradient of the state each chunk adds, and dCB
    from chunk_scan_bwd_dcb; written into out (any strides and dtype) where given."""
    b, l, h, p = x.shape
    g, n = C.shape[2], C.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]

    def launch(block_m, runs, **launch_options):  # one partial sum per run of heads, added up inside the timing
        db, s_run, strides = runs_into(out, runs, (b, l, g, n), x.device)
        _chunk_state_bwd_db[(Q // block_m, b * n_chunks, g * runs)](
            x, C, dcb, dt_chunked, cs, seq_idx, dstates, db, l, h, g, n_chunks, p, n,
            h // g, h // g // runs, *x.stride(), *C.stride(), s_run, *strides,
            seq_idx.stride(0) if seq_idx is not None else 0,
            Q=Q, HAS_SEQ=seq_idx is not None, IEEE=x.dtype == torch.float32, BLOCK_M=block_m,
            BLOCK_P=dot_block(p, p), BLOCK_N=dot_block(n, n), **launch_options)
        return sum_runs(db, out)

    return launch_fastest("chunk_state_bwd_db", (Q, p, n, h // g, x.dtype, seq_idx is None), b * l,
                          for_dtype(reduction_candidates(Q, h // g), x.dtype), launch)
