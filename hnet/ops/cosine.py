"""The cosine of two tensors row by row, as the official routing computes it (the caller shifts: q of
position t-1 against k of position t)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rowwise_cosine(q, k, eps: float = 1e-12):
    """q, k (..., D) -> (...): normalize(q) . normalize(k) over the last dim, each row alone: the
    official F.normalize of both, then einsum("bld,bld->bl"), without the einsum's batched matmul (one
    1 x D by D x 1 product per position, whose backward, two K = 1 GEMMs, took 4.2 ms at 8 x 8192 x 1024
    on an H200). Under autocast that matmul reads and writes the autocast dtype; the same roundings are
    made here, the sum in float32 as the matmul accumulates."""
    q, k = F.normalize(q, dim=-1, eps=eps), F.normalize(k, dim=-1, eps=eps)
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return (q.to(dtype).float() * k.to(dtype).float()).sum(-1).to(dtype)
    return (q * k).sum(-1)
