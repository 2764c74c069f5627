"""silu(gate) * value in one pass each way; equals `hnet.ops.swiglu.swiglu`. Unfused, the activation of a
strided half, the product and, backward, their gradients and the concatenation of the halves' gradients
were each a pass over the MLP's widest activations. `swiglu_mlp` is the whole MLP, fc2(swiglu(fc1(x))),
keeping only x for the backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv

BLOCK = 1024


@triton.jit(do_not_specialize=["hidden"])
def _swiglu_fwd(U, OUT, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < hidden
    value = tl.load(U + row * 2 * hidden + cols, mask=live, other=0.0).to(tl.float32)
    gate = tl.load(U + row * 2 * hidden + hidden + cols, mask=live, other=0.0).to(tl.float32)
    tl.store(OUT + row * hidden + cols, value * gate * tl.sigmoid(gate), mask=live)


@triton.jit(do_not_specialize=["hidden"])
def _swiglu_bwd(U, DOUT, DU, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < hidden
    value = tl.load(U + row * 2 * hidden + cols, mask=live, other=0.0).to(tl.float32)
    gate = tl.load(U + row * 2 * hidden + hidden + cols, mask=live, other=0.0).to(tl.float32)
    dout = tl.load(DOUT + row * hidden + cols, mask=live, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    tl.store(DU + row * 2 * hidden + cols, dout * gate * sig, mask=live)
    tl.store(DU + row * 2 * hidden + hidden + cols, dout * value * sig * (1 + gate * (1 - sig)), mask=live)


def _grid(rows: int, hidden: int):
    return (rows, cdiv(hidden, BLOCK))


def _activation(u):
    """u contiguous (..., 2h) -> silu(gate) * value (..., h)."""
    hidden = u.shape[-1] // 2
    out = torch.empty(*u.shape[:-1], hidden, device=u.device, dtype=u.dtype)
    if out.numel():
        _swiglu_fwd[_grid(u.numel() // u.shape[-1], hidden)](u, out, hidden, BLOCK=BLOCK)
    return out


def _activation_backward(u, dout):
    hidden = u.shape[-1] // 2
    du = torch.empty_like(u)
    if du.numel():
        _swiglu_bwd[_grid(u.numel() // u.shape[-1], hidden)](u, dout.contiguous(), du, hidden, BLOCK=BLOCK)
    return du


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        u = u.contiguous()
        ctx.save_for_backward(u)
        return _activation(u)

    @staticmethod
    def backward(ctx, dout):
        (u,) = ctx.saved_tensors
        return _activation_backward(u, dout)


class _SwiGLUMLP(torch.autograd.Function):
    """fc2(swiglu(fc1(x))) keeping only x and the weights for the backward, which recomputes fc1's output
    (one GEMM) and the activation. Stored, fc1's output (2 x hidden a position) and the activation (hidden)
    were the widest activations of the main network at the step's peak."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc2_weight):
        ctx.save_for_backward(x, fc1_weight, fc2_weight)
        return F.linear(_activation(F.linear(x, fc1_weight).contiguous()), fc2_weight)

    @staticmethod
    def backward(ctx, dout):
        x, fc1_weight, fc2_weight = ctx.saved_tensors
        u = F.linear(x, fc1_weight).contiguous()
        dout_rows = dout.flatten(0, -2)
        dfc2 = dout_rows.t().mm(_activation(u).flatten(0, -2)) if ctx.needs_input_grad[2] else None
        du = _activation_backward(u, dout.matmul(fc2_weight))
        del u
        dfc1 = du.flatten(0, -2).t().mm(x.flatten(0, -2)) if ctx.needs_input_grad[1] else None
        dx = du.matmul(fc1_weight) if ctx.needs_input_grad[0] else None
        return dx, dfc1, dfc2


def _check(u):
    if u.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dimension holds [value, gate] and must be even, got {u.shape[-1]}")


def swiglu(u):
    _check(u)
    return _SwiGLU.apply(u)


def swiglu_mlp(x, fc1_weight, fc2_weight):
    """F.linear(swiglu(F.linear(x, fc1_weight)), fc2_weight), fc1's output and the activation recomputed in
    the backward; all three in one dtype."""
    if fc1_weight.shape[0] % 2:
        raise ValueError(f"swiglu: fc1's output holds [value, gate] and must be even, got {fc1_weight.shape[0]}")
    return _SwiGLUMLP.apply(x, fc1_weight, fc2_weight)
