"""The gated activation of the Transformer's MLP."""

import torch.nn.functional as F


def swiglu(u):
    """u (..., 2h) = [value, gate], fc1's output in the official layout -> silu(gate) * value (..., h)."""
    value, gate = u.chunk(2, dim=-1)
    return F.silu(gate) * value
