"""RMSNorm variants, computed in float32 as the official kernels do."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps: float = 1e-5):
    """y = x * rsqrt(mean(x^2) + eps) * weight, in float32; returns float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def gated_rms_norm(x, z, weight, eps: float = 1e-5, out_dtype=torch.float32):
    """Mamba-2's output norm: the gate comes first, RMSNorm(x * silu(z)) * weight (one group), computed in
    float32 and returned in out_dtype."""
    return rms_norm(x.float() * F.silu(z.float()), weight, eps).to(out_dtype)


def add_rms_norm(h, residual, weight, eps: float = 1e-5):
    """The pre-norm residual step: residual' = h + residual in float32 (h alone when residual is None),
    y = rms_norm(residual') in h's dtype. Returns (y, residual')."""
    residual = h.float() if residual is None else h.float() + residual
    return rms_norm(residual, weight, eps).to(h.dtype), residual
