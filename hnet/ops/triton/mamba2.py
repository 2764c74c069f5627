"""Mamba-2's mixer, in_proj's output -> out_proj's input (or, given out_proj's weight, its output), as one
autograd Function; equals `hnet.ops.mamba2.mamba2_mixer` (same signature), built from the kernels of
conv1d, ssd and norm.

What fusing saves over the three ops composed (each its own Function, glued by torch):
- the forward reads z, xBC and dt in place from in_proj's output (strided rows, no split copies), and takes
  dt = softplus(dt + dt_bias) inside the SSD's first kernel (no float32 dt of its own, no softplus pass);
- the backward writes dz, dxBC and ddt straight into one gradient buffer for in_proj: the norm's backward
  writes dz there, the SSD's writes dx, dB, dC into one buffer that the convolution's backward reads, and
  ddt (through softplus, with dt_bias's sum) into in_proj's; the convolution's backward writes dxBC there.
  Unfused, autograd concatenated the split's gradients twice (the conv output's x, B, C and in_proj's z,
  xBC, dt), cast dB and dC, and ran the softplus, its cast and dt_bias's sum as passes of their own;
- the convolution's output (x, B, C: b x l x (d_inner + 2 d_state)) is not kept for the backward but
  recomputed there from in_proj's output, which is kept anyway (recompute_conv=False keeps it instead:
  a pass less, that tensor more at the peak);
- nor are the scan's entering states (x's size in float32) and C.B: the scan's backward recomputes them
  (recompute_states=False keeps them instead: a third of the scan's forward less in the backward);
- with out_proj's weight, nor is the norm's output, which out_proj would keep for its weight's gradient: the
  backward recomputes it from y and z, kept anyway (one pass of the norm).

Saved for the backward: in_proj's output, y (the scan's output, before the norm), the norm's rstd and the
scan's dt per chunk and their cumulative sums (`hnet.ops.triton.ssd.ssd_forward`'s saved), with its
entering states and C.B too where recompute_states is False.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hnet.ops.mamba2 import split_sizes
from hnet.ops.triton.conv1d import conv1d_backward, conv1d_forward
from hnet.ops.triton.norm import gated_rms_norm_backward, gated_rms_norm_forward, projection_backward, rows_of
from hnet.ops.triton.ssd import ssd_forward
from hnet.ops.triton.ssd.backward import ssd_backward


def _scan_views(xBC, nheads: int, headdim: int):
    """x (b, l, h, p), B and C (b, l, 1, n): views of the convolution's output (or of its gradient)."""
    b, l, conv_dim = xBC.shape
    d_inner = nheads * headdim
    d_state = (conv_dim - d_inner) // 2
    x, B, C = torch.split(xBC, [d_inner, d_state, d_state], dim=-1)
    return x.view(b, l, nheads, headdim), B.view(b, l, 1, d_state), C.view(b, l, 1, d_state)


def _rows(t):
    """t (b, l, d), unit stride over d, as rows (b l, d): a view, so that writes land in t."""
    return t.view(-1, t.shape[-1])


class _Mamba2Mixer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, out_proj_weight, seq_idx, headdim,
                chunk_size, eps, recompute_conv, recompute_states):
        b, l, _ = zxbcdt.shape
        nheads = dt_bias.shape[0]
        d_inner, conv_dim, _ = split_sizes(zxbcdt.shape[-1], conv_weight.shape[0], nheads)
        z, xBC, dt = torch.split(zxbcdt, [d_inner, conv_dim, nheads], dim=-1)
        conv_weight = conv_weight.contiguous()
        xBC_conv = conv1d_forward(xBC, conv_weight, conv_bias, seq_idx, silu=True)
        x, B, C = _scan_views(xBC_conv, nheads, headdim)
        A = -torch.exp(A_log.float())
        y, final_state, saved = ssd_forward(x, dt, A, B, C, chunk_size, D, None, seq_idx, dt_bias=dt_bias,
                                            dt_softplus=True, keep_states=not recompute_states)
        y2 = _rows(y.view(b, l, d_inner))
        out, rstd = gated_rms_norm_forward(y2, rows_of(z, d_inner), norm_weight, eps, y.dtype)
        out = out.view(b, l, d_inner)
        if out_proj_weight is not None:
            out = F.linear(out, out_proj_weight)
        kept = () if recompute_conv else (xBC_conv,)
        ctx.save_for_backward(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, seq_idx, y2,
                              rstd, *saved, *kept)
        ctx.headdim, ctx.eps, ctx.recompute_conv, ctx.a_log_dtype = headdim, eps, recompute_conv, A_log.dtype
        ctx.set_materialize_grads(False)
        return out, final_state

    @staticmethod
    def backward(ctx, dout, dfinal):
        zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, seq_idx, y2, rstd, *saved = \
            ctx.saved_tensors
        b, l, _ = zxbcdt.shape
        nheads, headdim = dt_bias.shape[0], ctx.headdim
        d_inner, conv_dim = nheads * headdim, conv_weight.shape[0]
        z, xBC, dt = torch.split(zxbcdt, [d_inner, conv_dim, nheads], dim=-1)
        xBC_conv = conv1d_forward(xBC, conv_weight, conv_bias, seq_idx, silu=True) if ctx.recompute_conv else saved.pop()

        # One buffer for in_proj's gradient: each part below writes its slice of it.
        dzxbcdt = torch.empty_like(zxbcdt)
        dz, dxBC_in, ddt = torch.split(dzxbcdt, [d_inner, conv_dim, nheads], dim=-1)
        dout_proj_weight = None
        if dout is None:  # only the final state is used
            dout = torch.zeros(b, l, d_inner, device=zxbcdt.device, dtype=y2.dtype)
        elif out_proj_weight is not None:
            dout, dout_proj_weight = projection_backward(dout, y2, rows_of(z, d_inner), norm_weight, ctx.eps, y2.dtype,
                                                         out_proj_weight, ctx.needs_input_grad[7])
        dy2, _, dnorm_weight = gated_rms_norm_backward(rows_of(dout, d_inner), y2, rows_of(z, d_inner), norm_weight,
                                                       rstd, dz=_rows(dz))

        # The scan's gradients on x, B, C, side by side as the convolution's output lay.
        dxBC = torch.empty(b, l, conv_dim, device=zxbcdt.device, dtype=zxbcdt.dtype)
        x, B, C = _scan_views(xBC_conv, nheads, headdim)
        dx, dB, dC = _scan_views(dxBC, nheads, headdim)
        _, _, dA, _, _, dD, _, ddt_bias = ssd_backward(dy2.view(b, l, nheads, headdim), dfinal, x, A, B, C, D, seq_idx,
                                                       saved, None, dt_raw=dt, dt_bias=dt_bias, out=(dx, dB, dC, ddt))
        del xBC_conv, x, B, C
        _, dconv_weight, dconv_bias = conv1d_backward(dxBC, xBC, conv_weight, conv_bias, seq_idx, silu=True,
                                                      dx=dxBC_in)
        dA_log = (dA * A).to(ctx.a_log_dtype)  # A = -exp(A_log)
        return (dzxbcdt, dconv_weight, dconv_bias, ddt_bias.to(dt_bias.dtype), dA_log,
                dD.to(D.dtype) if dD is not None else None, dnorm_weight, dout_proj_weight, None, None, None, None, None,
                None)


def mamba2_mixer(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, headdim: int, chunk_size: int,
                 seq_idx=None, eps: float = 1e-5, return_final_state: bool = False, recompute_conv: bool = True,
                 recompute_states: bool = True, out_proj_weight=None):
    """out_proj_weight: also apply out_proj (no bias; the weight in zxbcdt's dtype): (b, l, d_model) out."""
    if zxbcdt.stride(-1) != 1:
        zxbcdt = zxbcdt.contiguous()
    if seq_idx is not None:
        seq_idx = seq_idx.contiguous()  # the kernels step through it with unit stride
    out, final_state = _Mamba2Mixer.apply(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, out_proj_weight,
                                          seq_idx, headdim, chunk_size, eps, recompute_conv, recompute_states)
    return (out, final_state) if return_final_state else out
