"""silu(gate) * value in one pass each way; equals `hnet.ops.swiglu.swiglu`. Unfused, the activation of a
strided half, the product and, backward, their gradients and the concatenation of the halves' gradients
were each a pass over the MLP's widest activations. `swiglu_linear` also applies the MLP's fc2 and keeps
only u for the backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

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
    return (rows, triton.cdiv(hidden, BLOCK))


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


class _SwiGLULinear(torch.autograd.Function):
    """swiglu(u) @ weight.T keeping only u (and weight) for the backward, which recomputes the activation
    (one more pass over u) rather than hold it, half u's size, from the forward to the backward."""

    @staticmethod
    def forward(ctx, u, weight):
        u = u.contiguous()
        ctx.save_for_backward(u, weight)
        return F.linear(_activation(u), weight)

    @staticmethod
    def backward(ctx, dout):
        u, weight = ctx.saved_tensors
        h = _activation(u)
        dweight = dout.flatten(0, -2).t().mm(h.flatten(0, -2)) if ctx.needs_input_grad[1] else None
        return _activation_backward(u, dout.matmul(weight)), dweight


def _check(u):
    if u.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dimension holds [value, gate] and must be even, got {u.shape[-1]}")


def swiglu(u):
    _check(u)
    return _SwiGLU.apply(u)


def swiglu_linear(u, weight):
    """F.linear(swiglu(u), weight), the activation recomputed in the backward; weight in u's dtype."""
    _check(u)
    return _SwiGLULinear.apply(u, weight)
