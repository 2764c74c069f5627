"""The chunk boundaries a model draws on a text, placed on the text's byte offsets.

Stages are numbered from 1 here, as users name them: stage 1 routes the bytes, stage 2 routes the
stage-1 chunks; stage s is `out.routing[s - 1]` of the model. A stage-2 decision at chunk c sits at
the byte offset where stage-1 chunk c begins.

The model reads BOS (254) + the text, as the official generate.py feeds documents. BOS is always a
stage-1 boundary (p = 1) and is dropped from the result, so the first chunk may begin before the
text: offset 0 then starts a chunk for display and chunk lengths but is not a boundary.

Long texts are read in windows of `window` bytes (8192 by default, the paper's training length, so
attention never sees more positions than in training and memory stays bounded). Each window after the
first repeats the `context` bytes before it and keeps only the decisions after them, so every kept
decision has seen at least `context` bytes of the text before it. A text that fits one window is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hnet.constants import BOS
WINDOW = 8192
CONTEXT = 1024


@dataclass
class StageBoundaries:
    stage: int  # 1 = the outermost routing stage, over bytes
    offsets: np.ndarray  # (L_s,) int64: byte offset of each position this stage routes, increasing
    prob: np.ndarray  # (L_s,) float32: boundary probability p at those positions
    mask: np.ndarray  # (L_s,) bool: a chunk of this stage begins there (p > 0.5)

    @property
    def starts(self) -> np.ndarray:
        """Byte offsets of this stage's boundaries."""
        return self.offsets[self.mask]


@dataclass
class Boundaries:
    text: bytes
    stages: list[StageBoundaries]  # stage 1 first


def parse_stages(spec: str | int, num_stages: int) -> list[int]:
    """'all' -> [1, ..., num_stages]; '2' -> [2]; a stage the model lacks is a ValueError."""
    if num_stages == 0:
        raise ValueError("the model has no routing stage (an isotropic model has no chunk boundaries)")
    if str(spec) == "all":
        return list(range(1, num_stages + 1))
    if not str(spec).isdigit() or not 1 <= int(spec) <= num_stages:
        raise ValueError(f"--stage {spec}: the model has {num_stages} routing stage(s); use all or 1..{num_stages}")
    return [int(spec)]


def _decisions(routing) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per stage of one sequence's routing: (model position of each routed position, p, mask)."""
    positions = torch.arange(routing[0].boundary_mask.shape[1], device=routing[0].boundary_mask.device)
    out = []
    for r in routing:
        mask = r.boundary_mask[0]
        out.append((positions.cpu().numpy(), r.boundary_prob[0, :, 1].float().cpu().numpy(), mask.cpu().numpy()))
        positions = positions[mask]  # the next stage routes this stage's chunks
    return out


@torch.no_grad()
def extract_boundaries(model, text: bytes, window: int = WINDOW, context: int = CONTEXT) -> Boundaries:
    """Run `model` (an HNetForCausalLM) over `text` and collect every routing stage's decisions."""
    if not text:
        raise ValueError("the text is empty: nothing to inspect")
    if not 0 <= context < window:
        raise ValueError(f"context {context} must be at least 0 and less than the window {window}")
    device = next(model.parameters()).device
    pieces: dict[int, list[tuple]] = {}  # per stage, the kept decisions of each window
    keep_from = 0
    while keep_from < len(text):
        start = max(0, keep_from - context)
        end = min(len(text), start + window)
        routing = model(torch.tensor([[BOS, *text[start:end]]], device=device)).routing
        if not routing:
            raise ValueError("the model has no routing stage (an isotropic model has no chunk boundaries)")
        for s, (positions, prob, mask) in enumerate(_decisions(routing), 1):
            offsets = positions + start - 1  # BOS is model position 0
            kept = offsets >= keep_from
            pieces.setdefault(s, []).append((offsets[kept], prob[kept], mask[kept]))
        keep_from = end
    return Boundaries(text, [StageBoundaries(s, *map(np.concatenate, zip(*windows))) for s, windows in pieces.items()])
