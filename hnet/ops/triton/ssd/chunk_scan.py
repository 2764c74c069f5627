"""Step 4 of the SSD scan, the output:
y_i = exp(cs_i) [i in the entering sequence] C_i states_in
      + sum_{j <= i, same sequence} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j + D x_i.

x (b, l, h, p), C (b, l, g, n), CB (b, c, g, Q, Q), states_in (b, c, h, p, n) -> y (b, l, h, p) in x's dtype.

Its backward is three kernels here, the decayed (Q, Q) blocks living only in registers: `chunk_scan_bwd_dx`
(dx with the chunk-state term, dD, ddt's state part), `chunk_scan_bwd_dcb` (the gradient on C.B summed over
a group's heads, with the within-chunk parts of ddt and of the gradient on the cumulative sums) and
`chunk_scan_bwd_dc` (dC from it and from the entering state).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv
from hnet.ops.triton.ssd.chunk_state import dot_block, mm, reduction_candidates, runs_into, sum_runs
from hnet.ops.triton.tuning import for_dtype, launch_fastest


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _chunk_scan(X, C, CB, DT, CS, SEQ, STATES_IN, D, Y, l, h, g, n_chunks, p_dim, n_dim, heads_per_group,
                sxb, sxl, sxh, sxp, scb, scl, scg, scn, syb, syl, syh, syp, s_seq,
                Q: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # Heads are the fastest grid axis, so that a chunk's heads run together and read its C.B from the L2.
    n_blocks_p = tl.cdiv(p_dim, BLOCK_P)
    hd = tl.program_id(0)
    i0 = (tl.program_id(1) // n_blocks_p) * BLOCK_M
    i = i0 + tl.arange(0, BLOCK_M)
    cols = (tl.program_id(1) % n_blocks_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    b, c = tl.program_id(2) // n_chunks, tl.program_id(2) % n_chunks
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
    acc = mm(cm, s_in.to(cm.dtype), IEEE)
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
        acc += mm(scores.to(xj.dtype), xj, IEEE)

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
    block_n = dot_block(n, n)  # the whole state at once

    def launch(block_m, block_k, block_p, **launch_options):
        grid = (h, (Q // block_m) * cdiv(p, block_p), b * n_chunks)
        _chunk_scan[grid](x, C, cb, dt_chunked, cs, seq_idx, states_in, D, y, l, h, g, n_chunks, p, n, h // g,
                          *x.stride(), *C.stride(), *y.stride(), seq_idx.stride(0) if seq_idx is not None else 0,
                          Q=Q, HAS_SEQ=seq_idx is not None, HAS_D=D is not None, IEEE=x.dtype == torch.float32,
                          BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_N=block_n, **launch_options)

    candidates = [dict(block_m=min(64, Q), block_k=min(64, Q), block_p=dot_block(p, 64), num_warps=4)] + [
        dict(block_m=m, block_k=k, block_p=dot_block(p, bp), num_warps=w, num_stages=s)
        for m, k in ((64, 32), (64, 64), (128, 32), (128, 64)) for bp in (32, 64) for w, s in ((4, 2), (8, 2))
        if m <= Q and k <= Q]
    launch_fastest("chunk_scan", (Q, p, n, h // g, x.dtype, seq_idx is None, D is None), b * l,
                   for_dtype(candidates, x.dtype), launch)
    return y


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _chunk_scan_bwd_dx(X, B, DY, CB, DT, CS, SEQ, DSTATES, D, DX, DDT, DD, DS_STATE, l, h, g, n_chunks, p_dim, n_dim,
                       heads_per_group, sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, sdb, sdl, sdh, sdp,
                       sob, sol, soh, sop, s_seq,
                       Q: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a block of steps j of one head, with U_j = B_j dS_out^T and P_ji = (C_i . B_j) exp(cs_i - cs_j) M_ij:
        dx_j  = W_j dt_j U_j + sum_{i >= j} P_ji dt_j dy_i + D dy_j
        ddt_j = W_j (x_j . U_j)        (the state's part; the within-chunk part comes from _chunk_scan_bwd_dcb)
    and the partial sums of dy_j . x_j for dD and of dt_j W_j (x_j . U_j), the gradient on the chunk's last
    cumulative sum through the state it adds. W_j is the decay weight of that state."""
    hd, blk, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # heads fastest, as in _chunk_scan
    j0 = blk * BLOCK_M
    j = j0 + tl.arange(0, BLOCK_M)
    b, c = bc // n_chunks, bc % n_chunks
    grp = hd // heads_per_group
    lowp = X.dtype.element_ty
    tj = c * Q + j
    pp, nn = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    p_live, n_live = pp < p_dim, nn < n_dim
    chunk_base = ((b * h + hd) * n_chunks + c) * Q
    cs_j, dt_j = tl.load(CS + chunk_base + j), tl.load(DT + chunk_base + j)
    w = tl.exp(tl.load(CS + chunk_base + Q - 1) - cs_j)
    if HAS_SEQ:
        seq_j = tl.load(SEQ + b * s_seq + tj, mask=tj < l, other=-1)
        w = tl.where(seq_j == tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1)), w, 0.0)

    # Through the state the chunk adds.
    bj = tl.load(B + b * sbb + tj[:, None] * sbl + grp * sbg + nn[None, :] * sbn,
                 mask=(tj < l)[:, None] & n_live[None, :], other=0.0)  # (M, N)
    ds_out_t = tl.load(DSTATES + (((b * n_chunks + c) * h + hd) * p_dim + pp[None, :]) * n_dim + nn[:, None],
                       mask=n_live[:, None] & p_live[None, :], other=0.0)  # (N, P)
    u = mm(bj, ds_out_t.to(lowp), IEEE)
    xj_live = (tj < l)[:, None] & p_live[None, :]
    xj = tl.load(X + b * sxb + tj[:, None] * sxl + hd * sxh + pp[None, :] * sxp, mask=xj_live, other=0.0)
    acc = u * (w * dt_j)[:, None]
    ddt = w * tl.sum(xj.to(tl.float32) * u, axis=1)
    n_batch = tl.num_programs(2) // n_chunks
    tl.store(DS_STATE + ((blk * n_batch + b) * h + hd) * n_chunks + c, tl.sum(ddt * dt_j, axis=0))
    if HAS_D:
        dyj = tl.load(DY + b * sdb + tj[:, None] * sdl + hd * sdh + pp[None, :] * sdp, mask=xj_live, other=0.0)
        acc += tl.load(D + hd).to(tl.float32) * dyj.to(tl.float32)
        tl.store(DD + (bc * tl.num_programs(1) + blk) * h + hd,
                 tl.sum(tl.sum(dyj.to(tl.float32) * xj.to(tl.float32), axis=1), axis=0))

    # Within the chunk: the blocks of BLOCK_I steps i at and below the diagonal (BLOCK_I, a multiple or a divisor
    # of BLOCK_M: the first block starts at or before j0; its rows above the diagonal are masked).
    cb_base = ((b * n_chunks + c) * g + grp) * Q * Q
    for i0 in range(j0 - j0 % BLOCK_I, Q, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        ti = c * Q + i
        keep = i[None, :] >= j[:, None]
        if HAS_SEQ:
            keep &= tl.load(SEQ + b * s_seq + ti, mask=ti < l, other=-2)[None, :] == seq_j[:, None]
        cs_i = tl.load(CS + chunk_base + i)
        cb_t = tl.load(CB + cb_base + i[None, :] * Q + j[:, None])  # (M_j, M_i): C_i . B_j
        pt = tl.where(keep, cb_t * tl.exp(tl.where(keep, cs_i[None, :] - cs_j[:, None], 0.0)), 0.0)
        dyi = tl.load(DY + b * sdb + ti[:, None] * sdl + hd * sdh + pp[None, :] * sdp,
                      mask=(ti < l)[:, None] & p_live[None, :], other=0.0)  # (M_i, P)
        acc += mm((pt * dt_j[:, None]).to(lowp), dyi, IEEE)
    tl.store(DX + b * sob + tj[:, None] * sol + hd * soh + pp[None, :] * sop, acc, mask=xj_live)
    tl.store(DDT + chunk_base + j, ddt)


@triton.jit(do_not_specialize=["l", "n_chunks", "slot", "s_seq"])
def _chunk_scan_bwd_dcb(X, DY, CB, DT, CS, SEQ, DCB, DS_ROW, DDT_COL, l, h, n_chunks, p_dim, heads_per_group,
                        slot, sxb, sxl, sxh, sxp, sdb, sdl, sdh, sdp, s_seq,
                        Q: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """For a (BLOCK_M, BLOCK_M) block of rows i and columns j of a chunk at or below its diagonal, over the
    group's heads, with Z_ij = (dy_i . x_j) exp(cs_i - cs_j) M_ij per head:
        dCB_ij = sum_heads Z_ij dt_j       (the gradient on C_i . B_j, summed here once for dC and dB)
        ds_i  += Z_ij dt_j CB_ij over j    (y's rows on their cumulative sums: this block's share, per head)
        ddt_j += Z_ij CB_ij over i         (ddt's within-chunk part: this block's share, per head)
    The shares go to slot j // BLOCK_M of DS_ROW and i // BLOCK_M of DDT_COL, each slot (b, h, c, Q); a block
    above the diagonal has none and writes zeros there (so the slots need no zero fill first)."""
    n_blocks = Q // BLOCK_M
    bi, bj = tl.program_id(0) // n_blocks, tl.program_id(0) % n_blocks
    if bj <= bi:
        i = bi * BLOCK_M + tl.arange(0, BLOCK_M)
        j = bj * BLOCK_M + tl.arange(0, BLOCK_M)
        b, c, grp = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
        ti, tj = c * Q + i, c * Q + j
        pp = tl.arange(0, BLOCK_P)
        p_live = pp < p_dim
        keep = j[None, :] <= i[:, None]
        if HAS_SEQ:
            seq_i = tl.load(SEQ + b * s_seq + ti, mask=ti < l, other=-1)
            keep &= tl.load(SEQ + b * s_seq + tj, mask=tj < l, other=-2)[None, :] == seq_i[:, None]
        # Masked: C.B is not written above the diagonal blocks of chunk_cb's own blocking.
        cb = tl.load(CB + ((b * n_chunks + c) * tl.num_programs(2) + grp) * Q * Q + i[:, None] * Q + j[None, :],
                     mask=keep, other=0.0)
        acc = tl.zeros([BLOCK_M, BLOCK_M], dtype=tl.float32)
        for k in range(heads_per_group):
            hd = grp * heads_per_group + k
            chunk_base = ((b * h + hd) * n_chunks + c) * Q
            cs_i, cs_j, dt_j = tl.load(CS + chunk_base + i), tl.load(CS + chunk_base + j), tl.load(DT + chunk_base + j)
            decay = tl.where(keep, tl.exp(tl.where(keep, cs_i[:, None] - cs_j[None, :], 0.0)), 0.0)
            dyi = tl.load(DY + b * sdb + ti[:, None] * sdl + hd * sdh + pp[None, :] * sdp,
                          mask=(ti < l)[:, None] & p_live[None, :], other=0.0)  # (M_i, P)
            xt = tl.load(X + b * sxb + tj[None, :] * sxl + hd * sxh + pp[:, None] * sxp,
                         mask=(tj < l)[None, :] & p_live[:, None], other=0.0)  # (P, M_j)
            z = mm(dyi, xt, IEEE) * decay
            zdt = z * dt_j[None, :]
            acc += zdt
            tl.store(DS_ROW + bj * slot + chunk_base + i, tl.sum(zdt * cb, axis=1))
            tl.store(DDT_COL + bi * slot + chunk_base + j, tl.sum(z * cb, axis=0))
        tl.store(DCB + ((b * n_chunks + c) * tl.num_programs(2) + grp) * Q * Q + i[:, None] * Q + j[None, :],
                 acc.to(DCB.dtype.element_ty))
    else:
        i = bi * BLOCK_M + tl.arange(0, BLOCK_M)
        j = bj * BLOCK_M + tl.arange(0, BLOCK_M)
        b, c, grp = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks, tl.program_id(2)
        none = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in range(heads_per_group):
            chunk_base = ((b * h + grp * heads_per_group + k) * n_chunks + c) * Q
            tl.store(DS_ROW + bj * slot + chunk_base + i, none)
            tl.store(DDT_COL + bi * slot + chunk_base + j, none)


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _chunk_scan_bwd_dc(B, C, DY, DCB, CS, SEQ, STATES_IN, DC, DS, l, h, g, n_chunks, p_dim, n_dim,
                       heads_per_group, heads_per_program, sbb, sbl, sbg, sbn, scb, scl, scg, scn,
                       sdb, sdl, sdh, sdp, so_run, sob, sol, sog, son, s_seq,
                       Q: tl.constexpr, HAS_SEQ: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a block of steps i, summed over a run of the group's heads (one partial sum per run):
        dC_i = sum_heads E_i dy_i states_in + sum_{j <= i} dCB_ij B_j   (the second term in run 0 only),
    E_i = exp(cs_i) [i in the entering sequence]; and per head the part of the gradient that y_i puts on
    cs_i through the entering state, C_i . (E_i dy_i states_in). Run r's sum goes to DC + r so_run."""
    i0 = tl.program_id(0) * BLOCK_M
    i = i0 + tl.arange(0, BLOCK_M)
    b, c = tl.program_id(1) // n_chunks, tl.program_id(1) % n_chunks
    grp, run = tl.program_id(2) % g, tl.program_id(2) // g
    lowp = DY.dtype.element_ty
    ti = c * Q + i
    pp, nn = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    p_live, n_live = pp < p_dim, nn < n_dim
    ci = tl.load(C + b * scb + ti[:, None] * scl + grp * scg + nn[None, :] * scn,
                 mask=(ti < l)[:, None] & n_live[None, :], other=0.0)  # (M, N)
    if HAS_SEQ:
        entering = tl.load(SEQ + b * s_seq + ti, mask=ti < l, other=-1) == tl.load(SEQ + b * s_seq + tl.maximum(c * Q - 1, 0))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(heads_per_program):
        hd = grp * heads_per_group + run * heads_per_program + k
        chunk_base = ((b * h + hd) * n_chunks + c) * Q
        e = tl.exp(tl.load(CS + chunk_base + i))
        if HAS_SEQ:
            e = tl.where(entering, e, 0.0)
        dyi = tl.load(DY + b * sdb + ti[:, None] * sdl + hd * sdh + pp[None, :] * sdp,
                      mask=(ti < l)[:, None] & p_live[None, :], other=0.0)  # (M, P)
        s_in = tl.load(STATES_IN + (((b * n_chunks + c) * h + hd) * p_dim + pp[:, None]) * n_dim + nn[None, :],
                       mask=p_live[:, None] & n_live[None, :], other=0.0)  # (P, N)
        dc_state = mm(dyi, s_in.to(lowp), IEEE) * e[:, None]
        tl.store(DS + chunk_base + i, tl.sum(dc_state * ci.to(tl.float32), axis=1))
        acc += dc_state
    if run == 0:
        dcb_base = ((b * n_chunks + c) * g + grp) * Q * Q
        for j0 in range(0, i0 + BLOCK_M, BLOCK_M):  # blocks of steps j up to the diagonal
            j = j0 + tl.arange(0, BLOCK_M)
            tj = c * Q + j
            dcb = tl.load(DCB + dcb_base + i[:, None] * Q + j[None, :], mask=j[None, :] <= i[:, None], other=0.0)
            bj = tl.load(B + b * sbb + tj[:, None] * sbl + grp * sbg + nn[None, :] * sbn,
                         mask=(tj < l)[:, None] & n_live[None, :], other=0.0)  # (M_j, N)
            acc += mm(dcb, bj, IEEE)
    out = DC + run * so_run + b * sob + ti[:, None] * sol + grp * sog + nn[None, :] * son
    tl.store(out, acc, mask=(ti < l)[:, None] & n_live[None, :])


def chunk_scan_bwd_dx(x, B, dy, cb, dt_chunked, cs, dstates, D=None, seq_idx=None, dx=None):
    """(dx in x's dtype, ddt part (b, h, c, Q) float32, dD (h,) float32 or None, ds_state (b, h, c) float32:
    <dS_out, the state the chunk adds>, its gradient on cs_last) given dS_out (b, c, h, p, n). dx: a (b, l, h, p)
    tensor of any strides to write into (else a new one)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    dx = torch.empty_like(x) if dx is None else dx
    ddt = torch.empty_like(cs)

    def launch(block_m, block_i=None, **launch_options):  # -> the partial sums of dD and ds_state, one row per program
        grid = (h, Q // block_m, b * n_chunks)
        dd = torch.empty(grid[1] * grid[2], h, device=x.device, dtype=torch.float32) if D is not None else None
        ds_state = torch.empty(grid[1], b, h, n_chunks, device=x.device, dtype=torch.float32)
        _chunk_scan_bwd_dx[grid](x, B, dy, cb, dt_chunked, cs, seq_idx, dstates, D, dx, ddt, dd, ds_state,
                                 l, h, g, n_chunks, p, n, h // g, *x.stride(), *B.stride(), *dy.stride(), *dx.stride(),
                                 seq_idx.stride(0) if seq_idx is not None else 0,
                                 Q=Q, HAS_SEQ=seq_idx is not None, HAS_D=D is not None, IEEE=x.dtype == torch.float32,
                                 BLOCK_M=block_m, BLOCK_I=block_i or block_m, BLOCK_P=dot_block(p, p),
                                 BLOCK_N=dot_block(n, n), **launch_options)
        return dd, ds_state

    # block_i: the steps i of the within-chunk product a loop takes (block_m's by default); a longer one makes
    # its products K-deeper and the loop shorter, for more masked work on the diagonal.
    candidates = [dict(block_m=min(64, Q), num_warps=4)] + [
        dict(block_m=m, num_warps=w, num_stages=s) for m in (32, 64, 128) for w, s in ((4, 2), (8, 2), (8, 3))
        if m <= Q] + [dict(block_m=m, block_i=i, num_warps=4, num_stages=2) for m, i in ((32, 64), (32, 128), (64, 128))
                      if i <= Q]
    dd, ds_state = launch_fastest("chunk_scan_bwd_dx", (Q, p, n, h // g, x.dtype, seq_idx is None, D is None),
                                  b * l, for_dtype(candidates, x.dtype), launch)
    return dx, ddt, dd.sum(0) if D is not None else None, ds_state.sum(0)


def chunk_scan_bwd_dcb(x, dy, cb, dt_chunked, cs, seq_idx=None):
    """(dCB (b, c, g, Q, Q) in x's dtype, written at and below the diagonal only (its readers mask j > i);
    ds_row and ddt_col (b, h, c, Q) float32: the within-chunk parts of y's gradient on its rows' cumulative
    sums and of ddt)."""
    b, l, h, p = x.shape
    g = cb.shape[2]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    dcb = torch.empty(b, n_chunks, g, Q, Q, device=x.device, dtype=x.dtype)

    def launch(block_m, **launch_options):  # -> ds_row and ddt_col, summed over their per-block shares
        shares = torch.empty(2, Q // block_m, *cs.shape, device=x.device, dtype=torch.float32)
        _chunk_scan_bwd_dcb[((Q // block_m) ** 2, b * n_chunks, g)](
            x, dy, cb, dt_chunked, cs, seq_idx, dcb, shares[0], shares[1], l, h, n_chunks, p, h // g, cs.numel(),
            *x.stride(), *dy.stride(), seq_idx.stride(0) if seq_idx is not None else 0,
            Q=Q, HAS_SEQ=seq_idx is not None, IEEE=x.dtype == torch.float32,
            BLOCK_M=block_m, BLOCK_P=dot_block(p, p), **launch_options)
        return shares.sum(1)

    candidates = [dict(block_m=min(64, Q), num_warps=4)] + [
        dict(block_m=m, num_warps=w, num_stages=s) for m in (32, 64, 128) for w, s in ((4, 2), (8, 2)) if m <= Q]
    ds_row, ddt_col = launch_fastest("chunk_scan_bwd_dcb", (Q, p, h // g, x.dtype, seq_idx is None), b * l,
                                       for_dtype(candidates, x.dtype), launch)
    return dcb, ds_row, ddt_col


def chunk_scan_bwd_dc(B, C, dy, dcb, cs, states_in, seq_idx=None, out=None):
    """(dC (b, l, g, n) float32, ds (b, h, c, Q) float32: y's gradient on its rows' cumulative sums through the
    entering state) given dCB from chunk_scan_bwd_dcb; dC written into out (any strides and dtype) where given."""
    b, l, h, p = dy.shape
    g, n = C.shape[2], C.shape[3]
    n_chunks, Q = cs.shape[2], cs.shape[3]
    ds = torch.empty_like(cs)

    def launch(block_m, runs, **launch_options):  # one partial sum per run of heads, added up inside the timing
        dc, s_run, strides = runs_into(out, runs, (b, l, g, n), dy.device)
        _chunk_scan_bwd_dc[(Q // block_m, b * n_chunks, g * runs)](
            B, C, dy, dcb, cs, seq_idx, states_in, dc, ds, l, h, g, n_chunks, p, n,
            h // g, h // g // runs, *B.stride(), *C.stride(), *dy.stride(), s_run, *strides,
            seq_idx.stride(0) if seq_idx is not None else 0,
            Q=Q, HAS_SEQ=seq_idx is not None, IEEE=dy.dtype == torch.float32,
            BLOCK_M=block_m, BLOCK_P=dot_block(p, p), BLOCK_N=dot_block(n, n), **launch_options)
        return sum_runs(dc, out)

    dc = launch_fastest("chunk_scan_bwd_dc", (Q, p, n, h // g, dy.dtype, seq_idx is None), b * l,
                        for_dtype(reduction_candidates(Q, h // g), dy.dtype), launch)
    return dc, ds
