"""Depthwise causal conv1d (Mamba-2's short convolution), packed-sequence aware."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hnet.ops.cache import update_rows_


def causal_conv1d(x, weight, bias=None, seq_idx=None, activation: str | None = "silu"):
    """out_t = act(bias + sum_k weight[:, k] * x_{t - (K-1) + k}), taps never crossing a `seq_idx` change.

    x (b, l, d), weight (d, K), bias (d,), seq_idx (b, l) int or None. Left padding is zeros.
    """
    K = weight.shape[-1]
    out = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[-1])
    out = out.transpose(1, 2)
    if seq_idx is not None:
        # Remove the contribution of every tap that reaches into an earlier packed sequence.
        for shift in range(1, K):
            crossed = seq_idx[:, shift:] != seq_idx[:, :-shift]  # (b, l - shift)
            if crossed.any():
                leak = x[:, :-shift] * weight[:, K - 1 - shift]
                out[:, shift:] = out[:, shift:] - leak * crossed.unsqueeze(-1)
    if activation == "silu":
        out = F.silu(out)
    return out


def causal_conv1d_step(conv_state, x, weight, bias=None, mask=None):
    """One position of the causal convolution and its SiLU, every row at once (decoding): conv_state
    (b, K - 1, c) the row's last inputs, x (b, c) the new one, weight (c, 1, K). Returns the output (b, c)
    float32, rounded through x's dtype as the parallel path rounds its output; conv_state takes x (and
    drops its oldest input) where mask (b,) is True (every row when None)."""
    window = torch.cat([conv_state, x[:, None].to(conv_state.dtype)], dim=1)  # (b, K, c)
    update_rows_(conv_state, window[:, 1:], mask)
    out = (window.float() * weight.squeeze(1).t().float()).sum(1)
    if bias is not None:
        out = out + bias.float()
    return F.silu(out).to(x.dtype).float()
