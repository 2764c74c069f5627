"""The routing cosine in one pass each way; equals `hnet.ops.cosine.rowwise_cosine`, with its roundings
under autocast. Unfused, the normalisations, casts, product and sum were each a pass over q and k (65535 x
1024 each in the 1-stage L step; its 14 casts alone took 1.7 ms a step on the H200)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.norm import _launch_shape, rows_of  # one program per row, as the norms


@triton.jit
def _unit(X, row, sx, cols, d, eps):
    """(x, max(|x|, eps), x / max(|x|, eps)) of one row, float32."""
    x = tl.load(X + row * sx + cols, mask=cols < d, other=0.0).to(tl.float32)
    n = tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), eps)
    return x, n, x / n


@triton.jit(do_not_specialize=["n_rows"])
def _cosine_fwd(Q, K, COS, n_rows, d, sq, sk, eps, ROUND: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    for i in range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + i
        if row < n_rows:
            _, _, qh = _unit(Q, row, sq, cols, d, eps)
            _, _, kh = _unit(K, row, sk, cols, d, eps)
            if ROUND:  # the einsum's inputs in the autocast dtype
                qh = qh.to(COS.dtype.element_ty).to(tl.float32)
                kh = kh.to(COS.dtype.element_ty).to(tl.float32)
            tl.store(COS + row, tl.sum(qh * kh, axis=0))


@triton.jit(do_not_specialize=["n_rows"])
def _cosine_bwd(Q, K, DCOS, DQ, DK, n_rows, d, sq, sk, eps, ROUND: tl.constexpr, ROWS: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """dq = (g - qh (qh . g)) / max(|q|, eps) with g = dcos * kh (the einsum's gradient, rounded as it is),
    the projection term only where |q| > eps (below, the clamped norm is a constant); dk alike."""
    cols = tl.arange(0, BLOCK_D)
    live = cols < d
    for i in range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + i
        if row < n_rows:
            q, nq, qh = _unit(Q, row, sq, cols, d, eps)
            k, nk, kh = _unit(K, row, sk, cols, d, eps)
            dcos = tl.load(DCOS + row).to(tl.float32)
            if ROUND:
                gq = (dcos * kh.to(DCOS.dtype.element_ty).to(tl.float32)).to(DCOS.dtype.element_ty).to(tl.float32)
                gk = (dcos * qh.to(DCOS.dtype.element_ty).to(tl.float32)).to(DCOS.dtype.element_ty).to(tl.float32)
            else:
                gq, gk = dcos * kh, dcos * qh
            dq = gq / nq
            dk = gk / nk
            if nq > eps:
                dq -= qh * tl.sum(qh * gq, axis=0) / nq
            if nk > eps:
                dk -= kh * tl.sum(kh * gk, axis=0) / nk
            tl.store(DQ + row * d + cols, dq, mask=live)
            tl.store(DK + row * d + cols, dk, mask=live)


class _RowwiseCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, eps, out_dtype):
        shape, d = q.shape, q.shape[-1]
        q2, k2 = rows_of(q, d), rows_of(k, d)
        n_rows = q2.shape[0]
        cos = torch.empty(n_rows, device=q.device, dtype=out_dtype)
        block_d, rows, grid = _launch_shape(n_rows, d)
        if n_rows:
            _cosine_fwd[(grid,)](q2, k2, cos, n_rows, d, q2.stride(0), k2.stride(0), eps,
                                 ROUND=out_dtype != torch.float32, ROWS=rows, BLOCK_D=block_d)
        ctx.save_for_backward(q2, k2)
        ctx.shape, ctx.eps, ctx.round = shape, eps, out_dtype != torch.float32
        return cos.view(shape[:-1])

    @staticmethod
    def backward(ctx, dcos):
        q2, k2 = ctx.saved_tensors
        n_rows, d = q2.shape
        dq, dk = torch.empty(n_rows, d, device=q2.device, dtype=q2.dtype), torch.empty(n_rows, d, device=k2.device, dtype=k2.dtype)
        block_d, rows, grid = _launch_shape(n_rows, d)
        if n_rows:
            _cosine_bwd[(grid,)](q2, k2, dcos.reshape(-1).contiguous(), dq, dk, n_rows, d, q2.stride(0), k2.stride(0),
                                 ctx.eps, ROUND=ctx.round, ROWS=rows, BLOCK_D=block_d)
        return dq.view(ctx.shape), dk.view(ctx.shape), None, None


def rowwise_cosine(q, k, eps: float = 1e-12):
    if q.shape != k.shape:
        raise ValueError(f"rowwise_cosine: q and k must have one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    device = q.device.type
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    return _RowwiseCosine.apply(q, k, eps, out_dtype)
