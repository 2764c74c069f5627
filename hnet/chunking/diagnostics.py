"""Routing diagnostics of a batch, logged by the training loop, and the detection of a collapsed stage.

Per routing stage (outermost first), over the positions of the batch (of every process when a sum over
processes is given):
  boundary_rate      F, the fraction of positions that begin a chunk (the ratio loss's F)
  mean_prob          G, the mean boundary probability (the ratio loss's G)
  prob_std           the spread of the boundary probability
  near_threshold     the fraction of probabilities within 0.05 of the 0.5 threshold: a router that has
                     not decided (the regime the STE's gradient leaves small models in)
  stage_bytes_per_chunk  positions per chunk at this stage, 1 / F (the cumulative bytes per chunk is
                     logged beside it as bytes_per_chunk)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NEAR_THRESHOLD = 0.05
COLLAPSE_FACTOR = 4.0  # a stage is off target outside [N / 4, 4 N] positions per chunk
COLLAPSE_PATIENCE = 3  # ... for this many log steps in a row
SATURATED_RATE = 0.99  # or when (almost) every position is a boundary


def routing_sums(routing) -> torch.Tensor:
    """(num_stages, 5) float64 sums per stage: positions, boundaries, sum p, sum p^2, near-threshold
    count. Sums, so that processes add them (one all-reduce) before `routing_diagnostics`."""
    rows = []
    for r in routing:
        p = r.boundary_prob[..., 1].detach().double()
        rows.append(torch.stack([p.new_tensor(p.numel()), r.boundary_mask.sum().double(), p.sum(), (p * p).sum(),
                                 ((p - 0.5).abs() < NEAR_THRESHOLD).sum().double()]))
    return torch.stack(rows) if rows else torch.zeros(0, 5, dtype=torch.float64)


def routing_diagnostics(sums) -> dict[str, list[float]]:
    """The fields of the module docstring, one list entry per stage, from `routing_sums` (maybe summed
    over processes)."""
    out = {k: [] for k in ("boundary_rate", "mean_prob", "prob_std", "near_threshold", "stage_bytes_per_chunk")}
    for positions, boundaries, p_sum, p2_sum, near in torch.as_tensor(sums, dtype=torch.float64).tolist():
        mean = p_sum / positions
        out["boundary_rate"].append(boundaries / positions)
        out["mean_prob"].append(mean)
        out["prob_std"].append(max(p2_sum / positions - mean * mean, 0.0) ** 0.5)
        out["near_threshold"].append(near / positions)
        out["stage_bytes_per_chunk"].append(positions / max(boundaries, 1.0))
    return out


@dataclass
class CollapseMonitor:
    """Flags a stage as collapsed once its positions per chunk has stayed outside [N/4, 4N] of its target N,
    or its boundary rate at 1 (>= 0.99), for `patience` log steps in a row; it is no longer collapsed as
    soon as it comes back."""

    targets: list[float]
    patience: int = COLLAPSE_PATIENCE
    factor: float = COLLAPSE_FACTOR
    streaks: list[int] = field(default_factory=list)

    def update(self, diagnostics: dict) -> list[bool]:
        """The stages' collapsed flags after this log step's `routing_diagnostics`."""
        if not self.streaks:
            self.streaks = [0] * len(self.targets)
        for s, (n, per_chunk, rate) in enumerate(zip(self.targets, diagnostics["stage_bytes_per_chunk"],
                                                      diagnostics["boundary_rate"])):
            off = not (n / self.factor <= per_chunk <= n * self.factor) or rate >= SATURATED_RATE
            self.streaks[s] = self.streaks[s] + 1 if off else 0
        return [streak >= self.patience for streak in self.streaks]
