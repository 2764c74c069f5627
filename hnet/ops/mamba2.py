"""Mamba-2's mixer between its two projections, as one op: in_proj's output -> out_proj's input.

    z, xBC, dt = split(zxbcdt)                      widths d_inner, d_inner + 2 d_state, nheads
    x, B, C = split(silu(causal_conv1d(xBC)))       widths d_inner, d_state, d_state (one group)
    y = ssd(x, softplus(dt + dt_bias), -exp(A_log), B, C, D)
    out = RMSNorm(y * silu(z)) * norm_weight        (the gate before the norm; in y's dtype)

This composition of three ops is the definition; `hnet.ops.triton.mamba2` fuses it into one autograd
Function that must equal it. Shapes: zxbcdt (b, l, 2 d_inner + 2 d_state + nheads), conv_weight
(d_inner + 2 d_state, K), conv_bias (d_inner + 2 d_state,) or None, dt_bias, A_log and D (nheads,),
norm_weight (d_inner,), seq_idx (b, l) int or None (packed sequences: no tap and no state crosses a change).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hnet.ops.conv1d import causal_conv1d
from hnet.ops.norm import gated_rms_norm
from hnet.ops.ssd import ssd_chunked


def split_sizes(zxbcdt_width: int, conv_dim: int, nheads: int) -> tuple[int, int, int]:
    """(d_inner, conv_dim, nheads): the widths of z, xBC and dt in in_proj's output."""
    d_inner = zxbcdt_width - conv_dim - nheads
    if d_inner <= 0 or (conv_dim - d_inner) % 2:
        raise ValueError(f"mamba2_mixer: in_proj's output width {zxbcdt_width} does not split into z, xBC "
                         f"({conv_dim} wide: d_inner + 2 d_state) and dt ({nheads})")
    return d_inner, conv_dim, nheads


def mamba2_mixer(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, headdim: int, chunk_size: int,
                 seq_idx=None, eps: float = 1e-5, return_final_state: bool = False, *,
                 conv=causal_conv1d, scan=ssd_chunked, norm=gated_rms_norm):
    """out (b, l, d_inner) in zxbcdt's dtype, and with return_final_state the state after the last position
    (b, nheads, headdim, d_state) float32. conv, scan, norm: the three ops composed (their references; the
    dispatcher passes its own, so that unfused each op still takes its Triton kernel)."""
    b, l, _ = zxbcdt.shape
    nheads = dt_bias.shape[0]
    d_inner, conv_dim, _ = split_sizes(zxbcdt.shape[-1], conv_weight.shape[0], nheads)
    d_state = (conv_dim - d_inner) // 2
    z, xBC, dt = torch.split(zxbcdt, [d_inner, conv_dim, nheads], dim=-1)
    xBC = conv(xBC, conv_weight, conv_bias, seq_idx=seq_idx)
    x, B, C = torch.split(xBC, [d_inner, d_state, d_state], dim=-1)
    dt = F.softplus(dt.float() + dt_bias.float())  # identity above 20, as the kernel does
    A = -torch.exp(A_log.float())
    y, final_state = scan(x.view(b, l, nheads, headdim), dt, A, B.view(b, l, 1, d_state), C.view(b, l, 1, d_state),
                          chunk_size, D=D, seq_idx=seq_idx, return_final_state=True)
    out = norm(y.reshape(b, l, d_inner), z, norm_weight, eps, out_dtype=y.dtype)
    return (out, final_state) if return_final_state else out
