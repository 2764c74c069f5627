"""The ratio (load-balancing) loss that steers each stage toward a target compression N."""

from __future__ import annotations

import torch


def ratio_loss(routing, targets) -> torch.Tensor:
    """Sum over routing stages of N/(N-1) * ((N-1) F G + (1-F)(1-G)).

    F is the fraction of positions chosen as boundaries (no gradient), G the mean boundary probability,
    both over all positions of the batch, as the official `load_balancing_loss` computes them. The loss
    is minimal (= 1) when F = G = 1/N.
    """
    if len(targets) != len(routing):
        raise ValueError(f"ratio_loss: {len(targets)} target(s) for {len(routing)} routing stage(s)")
    total = 0.0
    for r, N in zip(routing, targets):
        F_ = r.boundary_mask.float().mean()
        G = r.boundary_prob[..., 1].float().mean()
        total = total + N / (N - 1) * ((N - 1) * F_ * G + (1 - F_) * (1 - G))
    return total
