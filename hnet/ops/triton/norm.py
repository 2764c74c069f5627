"""The two RMSNorms of the hot path, fused forward and backward, float32 math; x, z, h (..., d), weight (d,).
- gated: y = RMSNorm(x * silu(z)) * weight, float32 math, the output in the dtype asked for (the layer asks
  for x's: a bf16 output written once, not written in float32 and cast); equals `hnet.ops.norm.gated_rms_norm`;
- with the residual add before it: residual' = h + residual (float32), y = RMSNorm(residual') * weight in
  h's dtype; equals `hnet.ops.norm.add_rms_norm`. Unfused, each block's add, cast, square, mean, scale and
  cast were a pass over the float32 residual stream each way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2


@triton.jit(do_not_specialize=["n_rows"])
def _gated_rms_norm_fwd(X, Z, W, Y, RSTD, n_rows, d, sx, sz, eps, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    in_row = cols < d
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = tl.program_id(0) * ROWS_PER_PROGRAM + i
        if row < n_rows:
            x = tl.load(X + row * sx + cols, mask=in_row, other=0.0).to(tl.float32)
            z = tl.load(Z + row * sz + cols, mask=in_row, other=0.0).to(tl.float32)
            g = x * z * tl.sigmoid(z)
            rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=0) / d + eps)
            tl.store(Y + row * d + cols, g * rstd * w, mask=in_row)
            tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=["n_rows"])
def _gated_rms_norm_bwd(X, Z, W, RSTD, DY, DX, DZ, DW_PARTIAL, n_rows, d, sx, sz, sdy, sdx, sdz,
                        ROWS_PER_PROGRAM: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    in_row = cols < d
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)  # this program's rows' share of dweight
    for i in range(ROWS_PER_PROGRAM):
        row = tl.program_id(0) * ROWS_PER_PROGRAM + i
        if row < n_rows:
            x = tl.load(X + row * sx + cols, mask=in_row, other=0.0).to(tl.float32)
            z = tl.load(Z + row * sz + cols, mask=in_row, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * sdy + cols, mask=in_row, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            sig = tl.sigmoid(z)
            g_hat = x * z * sig * rstd  # the normalised gated input
            dw += dy * g_hat
            dg_hat = dy * w
            # d/dg of g * rstd(g): rstd * (dg_hat - g_hat * mean(dg_hat * g_hat))
            dg = rstd * (dg_hat - g_hat * tl.sum(dg_hat * g_hat, axis=0) / d)
            tl.store(DX + row * sdx + cols, dg * z * sig, mask=in_row)
            tl.store(DZ + row * sdz + cols, dg * x * sig * (1 + z * (1 - sig)), mask=in_row)
    tl.store(DW_PARTIAL + tl.program_id(0) * d + cols, dw, mask=in_row)


@triton.jit(do_not_specialize=["n_rows"])
def _add_rms_norm_fwd(H, RES, W, Y, RES_OUT, RSTD, n_rows, d, eps, HAS_RESIDUAL: tl.constexpr,
                      ROWS_PER_PROGRAM: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    in_row = cols < d
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = tl.program_id(0) * ROWS_PER_PROGRAM + i
        if row < n_rows:
            x = tl.load(H + row * d + cols, mask=in_row, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                x += tl.load(RES + row * d + cols, mask=in_row, other=0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps)
            tl.store(RES_OUT + row * d + cols, x, mask=in_row)
            tl.store(Y + row * d + cols, x * rstd * w, mask=in_row)
            tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=["n_rows"])
def _add_rms_norm_bwd(X, W, RSTD, DY, DRES_OUT, DH, DRES, DW_PARTIAL, n_rows, d, HAS_DRES_OUT: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_D: tl.constexpr):
    """X is residual' (float32). Its gradient, the norm's plus what later blocks put on residual' directly,
    is both dh (in h's dtype) and d residual."""
    cols = tl.arange(0, BLOCK_D)
    in_row = cols < d
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = tl.program_id(0) * ROWS_PER_PROGRAM + i
        if row < n_rows:
            x_hat = tl.load(X + row * d + cols, mask=in_row, other=0.0) * tl.load(RSTD + row)
            dy = tl.load(DY + row * d + cols, mask=in_row, other=0.0).to(tl.float32)
            dw += dy * x_hat
            dx_hat = dy * w
            dx = tl.load(RSTD + row) * (dx_hat - x_hat * tl.sum(dx_hat * x_hat, axis=0) / d)
            if HAS_DRES_OUT:
                dx += tl.load(DRES_OUT + row * d + cols, mask=in_row, other=0.0)
            tl.store(DH + row * d + cols, dx, mask=in_row)
            if HAS_RESIDUAL:
                tl.store(DRES + row * d + cols, dx, mask=in_row)
    tl.store(DW_PARTIAL + tl.program_id(0) * d + cols, dw, mask=in_row)


def _launch_shape(n_rows: int, d: int):
    block_d = next_power_of_2(d)
    rows_per_program = 8 if n_rows >= 8 * 1024 else 1  # amortise the weight load when rows are plenty
    return block_d, rows_per_program, cdiv(n_rows, rows_per_program)


def rows_of(t, d: int):
    """t (..., d) as (rows, d) with unit stride along d, a view where one exists (Mamba-2's gate z is a
    slice of in_proj's output: rows of the full projection's stride), else a copy."""
    t2 = t.reshape(-1, d)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def gated_rms_norm_forward(x2, z2, weight, eps: float, out_dtype):
    """(y, rstd) of rows x2, z2 (n_rows, d), each with unit stride over d: y (n_rows, d) new in out_dtype,
    rstd (n_rows,) float32."""
    n_rows, d = x2.shape
    y = torch.empty(n_rows, d, device=x2.device, dtype=out_dtype)
    rstd = torch.empty(n_rows, device=x2.device, dtype=torch.float32)
    block_d, rows, grid = _launch_shape(n_rows, d)
    _gated_rms_norm_fwd[(grid,)](x2, z2, weight, y, rstd, n_rows, d, x2.stride(0), z2.stride(0), eps,
                                 ROWS_PER_PROGRAM=rows, BLOCK_D=block_d)
    return y, rstd


def gated_rms_norm_backward(dy2, x2, z2, weight, rstd, dx=None, dz=None):
    """(dx, dz, dweight) of `gated_rms_norm_forward`; dy2, dx and dz are rows (n_rows, d) with unit stride over
    d, dx and dz written in place where given (Mamba-2's fused mixer writes dz into in_proj's gradient),
    else new in x2's and z2's dtypes."""
    n_rows, d = x2.shape
    dx = torch.empty(n_rows, d, device=x2.device, dtype=x2.dtype) if dx is None else dx
    dz = torch.empty(n_rows, d, device=z2.device, dtype=z2.dtype) if dz is None else dz
    block_d, rows, grid = _launch_shape(n_rows, d)
    dw_partial = torch.empty(grid, d, device=x2.device, dtype=torch.float32)
    _gated_rms_norm_bwd[(grid,)](x2, z2, weight, rstd, dy2, dx, dz, dw_partial, n_rows, d, x2.stride(0),
                                 z2.stride(0), dy2.stride(0), dx.stride(0), dz.stride(0),
                                 ROWS_PER_PROGRAM=rows, BLOCK_D=block_d)
    return dx, dz, dw_partial.sum(0).to(weight.dtype)


def projection_backward(dout, x2, z2, weight, eps: float, out_dtype, out_proj_weight, weight_grad: bool):
    """The backward of F.linear(the gated norm's output of rows x2, z2, out_proj_weight) whose input was not
    kept: (the gradient on the norm's output, as rows; out_proj's weight's gradient, from the norm's output
    recomputed, or None if not weight_grad)."""
    dout = dout.reshape(-1, dout.shape[-1])
    dout_proj_weight = None
    if weight_grad:
        y, _ = gated_rms_norm_forward(x2, z2, weight, eps, out_dtype)
        dout_proj_weight = dout.t().mm(y)
    return dout.mm(out_proj_weight), dout_proj_weight


class _GatedRMSNorm(torch.autograd.Function):
    """With out_proj's weight, also the projection, whose input (the norm's output) is recomputed in the
    backward for the weight's gradient rather than kept from the forward (one pass of the norm)."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, out_dtype, out_proj_weight):
        shape, d = x.shape, x.shape[-1]
        x2, z2 = rows_of(x, d), rows_of(z, d)
        y, rstd = gated_rms_norm_forward(x2, z2, weight, eps, out_dtype)
        ctx.save_for_backward(x2, z2, weight, rstd, out_proj_weight)
        ctx.shape, ctx.eps, ctx.out_dtype = shape, eps, out_dtype
        if out_proj_weight is None:
            return y.view(shape)
        return F.linear(y, out_proj_weight).view(*shape[:-1], -1)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, rstd, out_proj_weight = ctx.saved_tensors
        dout_proj_weight = None
        if out_proj_weight is not None:
            dy, dout_proj_weight = projection_backward(dy, x2, z2, weight, ctx.eps, ctx.out_dtype, out_proj_weight,
                                                       ctx.needs_input_grad[5])
        dx, dz, dw = gated_rms_norm_backward(rows_of(dy, x2.shape[1]), x2, z2, weight, rstd)
        return dx.view(ctx.shape), dz.view(ctx.shape), dw, None, None, dout_proj_weight


def gated_rms_norm(x, z, weight, eps: float = 1e-5, out_dtype=torch.float32, out_proj_weight=None):
    """out_proj_weight (no bias, in out_dtype): also apply out_proj, keeping only what the norm keeps."""
    return _GatedRMSNorm.apply(x, z, weight, eps, out_dtype, out_proj_weight)


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, residual, weight, eps):
        shape, d = h.shape, h.shape[-1]
        h2 = h.reshape(-1, d).contiguous()
        res2 = residual.reshape(-1, d).contiguous() if residual is not None else None
        n_rows = h2.shape[0]
        y = torch.empty_like(h2)
        res_out = torch.empty(n_rows, d, device=h.device, dtype=torch.float32)
        rstd = torch.empty(n_rows, device=h.device, dtype=torch.float32)
        block_d, rows, grid = _launch_shape(n_rows, d)
        _add_rms_norm_fwd[(grid,)](h2, res2, weight, y, res_out, rstd, n_rows, d, eps,
                                   HAS_RESIDUAL=residual is not None, ROWS_PER_PROGRAM=rows, BLOCK_D=block_d)
        ctx.save_for_backward(res_out, weight, rstd)
        ctx.set_materialize_grads(False)
        ctx.shape, ctx.h_dtype, ctx.has_residual = shape, h.dtype, residual is not None
        return y.view(shape), res_out.view(shape)

    @staticmethod
    def backward(ctx, dy, dres_out):
        x, weight, rstd = ctx.saved_tensors
        n_rows, d = x.shape
        dy = dy.reshape(n_rows, d).contiguous() if dy is not None else torch.zeros_like(x, dtype=ctx.h_dtype)
        if dres_out is not None:
            dres_out = dres_out.reshape(n_rows, d).contiguous()
        dh = torch.empty(n_rows, d, device=x.device, dtype=ctx.h_dtype)
        dres = torch.empty_like(x) if ctx.has_residual else None
        block_d, rows, grid = _launch_shape(n_rows, d)
        dw_partial = torch.empty(grid, d, device=x.device, dtype=torch.float32)
        _add_rms_norm_bwd[(grid,)](x, weight, rstd, dy, dres_out, dh, dres, dw_partial, n_rows, d,
                                   HAS_DRES_OUT=dres_out is not None, HAS_RESIDUAL=ctx.has_residual,
                                   ROWS_PER_PROGRAM=rows, BLOCK_D=block_d)
        dw = dw_partial.sum(0).to(weight.dtype)
        return dh.view(ctx.shape), dres.view(ctx.shape) if dres is not None else None, dw, None


def add_rms_norm(h, residual, weight, eps: float = 1e-5):
    return _AddRMSNorm.apply(h, residual, weight, eps)
