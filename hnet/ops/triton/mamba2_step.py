"""A Mamba-2 layer's decoding step between its projections in two launches: the short convolution's step
(equals `hnet.ops.conv1d.causal_conv1d_step`) and the SSD recurrence's step with dt's softplus and A from
A_log (equals `hnet.ops.ssd.ssd_state_update`). Op by op they were some twenty small kernels a layer and
byte (the window's concatenation, the casts, the products, the decay, the masked copies back, the
contraction with C), each a few microseconds at decoding's sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2
from hnet.ops.triton.ssd.chunk_cumsum import softplus


@triton.jit
def _conv_step(STATE, X, W, BIAS, LIVE, OUT, c, ssb, ssk, sxb, K: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """Channels BLOCK of row b: out = silu(sum_k window_k w_k + bias) rounded to x's dtype, window = the
    K - 1 held inputs and x; the held inputs shift by one where live."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < c
    keep = inside
    if HAS_MASK:
        keep = inside & (tl.load(LIVE + b + cols * 0) != 0)
    row = STATE + b * ssb + cols
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.static_range(K - 1):  # the oldest held input first, as the reference sums
        value = tl.load(row + k * ssk, mask=inside, other=0.0)
        acc += value.to(tl.float32) * tl.load(W + cols * K + k, mask=inside, other=0.0).to(tl.float32)
        if k > 0:
            tl.store(row + (k - 1) * ssk, value, mask=keep)  # one slot older
    held = tl.load(X + b * sxb + cols, mask=inside, other=0.0).to(STATE.dtype.element_ty)  # as the state holds it
    acc += held.to(tl.float32) * tl.load(W + cols * K + K - 1, mask=inside, other=0.0).to(tl.float32)
    tl.store(row + (K - 2) * ssk, held, mask=keep)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=inside, other=0.0).to(tl.float32)
    out = acc * tl.sigmoid(acc)
    tl.store(OUT + b * c + cols, out.to(X.dtype.element_ty).to(tl.float32), mask=inside)


def causal_conv1d_step(conv_state, x, weight, bias=None, mask=None):
    bsz, held, c = conv_state.shape
    K = weight.shape[-1]
    if held != K - 1 or x.stride(-1) != 1 or conv_state.stride(-1) != 1:
        raise ValueError(f"causal_conv1d_step: conv_state {tuple(conv_state.shape)} must hold K - 1 = {K - 1} "
                         "inputs, it and x with unit stride along the channels")
    out = torch.empty(bsz, c, device=x.device, dtype=torch.float32)
    block = min(1024, next_power_of_2(c))
    weight = weight.reshape(c, K).contiguous()
    _conv_step[(bsz, cdiv(c, block))](
        conv_state, x, weight, weight if bias is None else bias, conv_state if mask is None else mask.view(torch.uint8),
        out, c, conv_state.stride(0), conv_state.stride(1), x.stride(0), K=K, HAS_BIAS=bias is not None,
        HAS_MASK=mask is not None, BLOCK=block)
    return out


@triton.jit
def _state_update(S, X, DT, DT_BIAS, A_LOG, B, C, D, LIVE, Y, p, n, ssb, ssh, ssp, sxb, sxh, sdb, sbb, scb,
                  syb, syh, HAS_MASK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows BLOCK_P of head h's state of row b: dt = softplus(dt + dt_bias), new = exp(-dt exp(a_log)) S +
    dt x B^T, Y = new C + D x, S <- new where live (nothing written elsewhere)."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    in_p, in_n = ps < p, ns < n
    dt = softplus(tl.load(DT + b * sdb + h).to(tl.float32) + tl.load(DT_BIAS + h).to(tl.float32))
    a = -tl.exp(tl.load(A_LOG + h).to(tl.float32))
    x = tl.load(X + b * sxb + h * sxh + ps, mask=in_p, other=0.0)
    state_at = S + b * ssb + h * ssh + ps[:, None] * ssp + ns[None, :]
    inside = in_p[:, None] & in_n[None, :]
    state = tl.load(state_at, mask=inside, other=0.0)
    new = tl.exp(dt * a) * state + (dt * x)[:, None] * tl.load(B + b * sbb + ns, mask=in_n, other=0.0)[None, :]
    y = tl.sum(new * tl.load(C + b * scb + ns, mask=in_n, other=0.0)[None, :], axis=1)
    tl.store(Y + b * syb + h * syh + ps, y + tl.load(D + h).to(tl.float32) * x, mask=in_p)
    if HAS_MASK:  # a row that does not advance keeps its state: nothing is written back
        inside = inside & (tl.load(LIVE + b + ps * 0) != 0)[:, None]  # the row's flag, as a vector
    tl.store(state_at, new, mask=inside)


def ssd_state_update(state, x, dt, dt_bias, A_log, B, C, D, mask=None):
    bsz, h, p, n = state.shape
    for name, t in (("state", state), ("x", x), ("B", B), ("C", C)):
        if t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError(f"ssd_state_update: {name} must be float32 with unit stride along its last dim")
    if dt.stride(-1) != 1:
        raise ValueError("ssd_state_update: dt must have unit stride along the heads")
    y = x.new_empty(bsz, h, p)
    block_n = next_power_of_2(n)
    block_p = min(next_power_of_2(p), max(1, 4096 // block_n))
    _state_update[(bsz, h, cdiv(p, block_p))](
        state, x, dt, dt_bias, A_log, B, C, D, state if mask is None else mask.view(torch.uint8), y, p, n,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), B.stride(0),
        C.stride(0), y.stride(0), y.stride(1), HAS_MASK=mask is not None, BLOCK_P=block_p, BLOCK_N=block_n)
    return y
