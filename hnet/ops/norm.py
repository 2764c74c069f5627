"""RMSNorm variants, computed in float32 as the official kernels do."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps: float = 1e-5):
    """y = x * rsqrt(mean(x^2) + eps) * weight, in float32; returns float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def gated_rms_norm(x, z, weight, eps: float = 1e-5):
    """Mamba-2's output norm: the gate comes first, RMSNorm(x * silu(z)) * weight (one group)."""
    return rms_norm(x.float() * F.silu(z.float()), weight, eps)
