"""One decoding step of the SSD recurrence in one launch; equals `hnet.ops.ssd.ssd_state_update`. Op by op it
was ten small kernels a Mamba-2 layer and byte (the products, the decay, the masked copy back, the
contraction with C), each a few microseconds at decoding's sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _state_update(S, X, DT, A, B, C, D, LIVE, Y, p, n, ssb, ssh, ssp, sxb, sxh, sdb, sbb, scb, syb, syh,
                  HAS_MASK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows BLOCK_P of head h's state of row b: new = exp(dt a) S + dt x B^T, Y = new C + D x, S <- new where live."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    in_p, in_n = ps < p, ns < n
    dt = tl.load(DT + b * sdb + h)
    x = tl.load(X + b * sxb + h * sxh + ps, mask=in_p, other=0.0)
    state_at = S + b * ssb + h * ssh + ps[:, None] * ssp + ns[None, :]
    inside = in_p[:, None] & in_n[None, :]
    state = tl.load(state_at, mask=inside, other=0.0)
    new = tl.exp(dt * tl.load(A + h)) * state + (dt * x)[:, None] * tl.load(B + b * sbb + ns, mask=in_n, other=0.0)[None, :]
    y = tl.sum(new * tl.load(C + b * scb + ns, mask=in_n, other=0.0)[None, :], axis=1) + tl.load(D + h) * x
    tl.store(Y + b * syb + h * syh + ps, y, mask=in_p)
    if HAS_MASK:
        new = tl.where(tl.load(LIVE + b) != 0, new, state)
    tl.store(state_at, new, mask=inside)


def ssd_state_update(state, x, dt, A, B, C, D, mask=None):
    bsz, h, p, n = state.shape
    for name, t in (("state", state), ("x", x), ("dt", dt), ("B", B), ("C", C)):
        if t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError(f"ssd_state_update: {name} must be float32 with unit stride along its last dim")
    y = x.new_empty(bsz, h, p)
    block_n = triton.next_power_of_2(n)
    block_p = min(triton.next_power_of_2(p), max(1, 4096 // block_n))
    live = mask.view(torch.uint8) if mask is not None else state  # without a mask: never read
    _state_update[(bsz, h, triton.cdiv(p, block_p))](
        state, x, dt, A.contiguous(), B, C, D.contiguous(), live, y, p, n, state.stride(0), state.stride(1),
        state.stride(2), x.stride(0), x.stride(1), dt.stride(0), B.stride(0), C.stride(0), y.stride(0), y.stride(1),
        HAS_MASK=mask is not None, BLOCK_P=block_p, BLOCK_N=block_n)
    return y
