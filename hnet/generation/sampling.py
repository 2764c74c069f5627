"""The next byte from logits: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@dataclass(frozen=True)
class Sampling:
    """How the next byte is chosen; fixed for a whole decode (a CUDA graph holds it as constants)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)

    def __call__(self, logits, generator=None):
        return sample(logits, self.temperature, self.top_k, self.top_p, generator)


def sample(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, generator=None):
    """logits (B, V) -> ids (B,). Temperature 0 is greedy; top_k keeps the k most likely ids, top_p the
    smallest set of most likely ids whose probability reaches p (always at least one).

    A draw is the race of exponential clocks: argmax(probs / E) with E ~ Exp(1) i.i.d. picks id i with
    probability probs[i]. Unlike torch.multinomial it has no data-dependent checks, so it runs inside a
    CUDA graph; the generator (seeded: reproducible draws) lives on the logits' device.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely ids
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    clocks = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / clocks).argmax(dim=-1)
