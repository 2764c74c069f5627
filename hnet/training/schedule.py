"""Learning-rate schedules as multipliers of the base rate (for torch's LambdaLR)."""

from __future__ import annotations

import math


def lr_multiplier(step: int, max_steps: int, schedule: str = "wsd", warmup_fraction: float = 0.1,
                  decay_fraction: float = 0.2, min_fraction: float = 0.0) -> float:
    """wsd: linear warmup, constant, then a linear decay over the last `decay_fraction` of the steps
    (the paper's warmup-stable-decay); cosine: linear warmup, then a cosine down to `min_fraction`."""
    warmup = max(1, round(warmup_fraction * max_steps))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = max_steps - round(decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / max(1, max_steps - decay_start)
        return 1.0 - (1.0 - min_fraction) * min(progress, 1.0)
    progress = min(1.0, (step - warmup + 1) / max(1, max_steps - warmup))
    return min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
