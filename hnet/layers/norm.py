import torch
from torch import nn

from hnet.ops.dispatch import add_rms_norm, gated_rms_norm
from hnet.ops.norm import rms_norm


class RMSNorm(nn.Module):
    """Weight-only RMSNorm computed in float32; the output takes the input's dtype."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps).to(x.dtype)

    def add(self, h, residual):
        """The pre-norm residual step: (self(residual'), residual') with residual' = h + residual in float32."""
        return add_rms_norm(h, residual, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """Mamba-2's output norm: RMSNorm(x * silu(z)) * weight."""

    def forward(self, x, z):
        return gated_rms_norm(x, z, self.weight, self.eps, out_dtype=x.dtype)
