"""The ratio (load-balancing) loss that steers each routing stage toward a target compression N."""

from __future__ import annotations

import torch


def boundary_fraction_and_mean_prob(r, counts=None, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, G) of one stage: the fraction of positions chosen as boundaries (no gradient) and the mean
    boundary probability, over every position of the batch, as the official `load_balancing_loss` counts.

    counts: (boundaries, positions) summed over all processes. With them F and G are the global batch's:
    each process's G is its probability sum over the global positions times `world_size`, so that averaging
    the processes' gradients (DDP) gives the gradient of the global G. The loss is affine in G, so N
    processes then compute exactly what one process computes on the same global batch.
    """
    p = r.boundary_prob[..., 1].float()
    if counts is None:
        return r.boundary_mask.float().mean(), p.mean()
    boundaries, positions = counts
    return boundaries / positions, p.sum() / positions * world_size


def ratio_loss_terms(routing, targets, counts=None, world_size: int = 1, bands=None) -> list[torch.Tensor]:
    """One loss per routing stage (outermost first): N/(N-1) * ((N-1) F G + (1-F)(1-G)), minimal (= 1)
    at F = G = 1/N.

    counts: (num_stages, 2) boundaries and positions per stage over all processes (see
    `boundary_fraction_and_mean_prob`); None counts this batch alone.
    bands: per stage None or (low, high) bytes per chunk, low <= N <= high. A band penalises only leaving
    it: N becomes 1/F clamped to the band, so inside the band the loss is 1 with no gradient, and outside
    it is the official loss with the nearer edge as target (a hinge in the spirit of FLEXITOKENS' band
    around the target rate). A band (N, N) is the official loss.
    """
    if len(targets) != len(routing):
        raise ValueError(f"ratio_loss: {len(targets)} target(s) for {len(routing)} routing stage(s)")
    terms = []
    for s, (r, N) in enumerate(zip(routing, targets)):
        F, G = boundary_fraction_and_mean_prob(r, None if counts is None else counts[s], world_size)
        band = bands[s] if bands is not None else None
        if band is not None:
            N = (1 / F.clamp_min(1e-12)).clamp(band[0], band[1])
        terms.append(N / (N - 1) * ((N - 1) * F * G + (1 - F) * (1 - G)))
    return terms


def ratio_loss(routing, targets, counts=None, world_size: int = 1, bands=None) -> torch.Tensor:
    """The sum over routing stages of `ratio_loss_terms`."""
    return sum(ratio_loss_terms(routing, targets, counts, world_size, bands))
