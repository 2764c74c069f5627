"""Log-likelihoods of continuations, many requests at a time: what a multiple-choice benchmark asks of a model.

A request is (context, continuation), both id sequences, the context with BOS first. The model reads
context + continuation but its last id, and the continuation's log-probability is the sum of the log-
softmax at the positions that predict its ids. A request longer than `window` + 1 ids keeps its last
`window` + 1 (the front of the context goes, BOS included, as in a later window of `hnet eval`).

Requests are sorted by length, longest first, and run `batch_size` at a time: rows of one length as a
plain batch, rows of different lengths packed into one sequence with `cu_seqlens` (or right-padded with
a mask, `packing=False`). Every row computes what it would alone; the tests hold the three ways together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _row(context: Sequence[int], continuation: Sequence[int], window: int) -> tuple[list[int], int]:
    """(the ids the model reads + the last target, how many targets at the end are scored)."""
    if not context:
        raise ValueError("a request's context must hold at least BOS")
    if len(continuation) > window:
        raise ValueError(f"a continuation of {len(continuation)} ids does not fit the window of {window}")
    ids = [*context, *continuation][-(window + 1):]
    return ids, len(continuation)


def _forward_rows(model, rows: list[list[int]], packing: bool, device) -> list[torch.Tensor]:
    """The logits (len(row) - 1, vocab) of each row's input (the row but its last id)."""
    inputs = [torch.tensor(r[:-1], dtype=torch.long) for r in rows]
    lengths = [len(x) for x in inputs]
    if len(set(lengths)) == 1:
        logits = model(torch.stack(inputs).to(device)).logits
        return list(logits)
    if packing:
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        logits = model(torch.cat(inputs)[None].to(device), cu_seqlens=cu_seqlens).logits[0]
        return list(logits.split(lengths))
    longest = max(lengths)
    padded = torch.zeros(len(inputs), longest, dtype=torch.long)
    mask = torch.zeros(len(inputs), longest, dtype=torch.bool)
    for i, x in enumerate(inputs):
        padded[i, :len(x)], mask[i, :len(x)] = x, True
    logits = model(padded.to(device), mask=mask.to(device)).logits
    return [logits[i, :n] for i, n in enumerate(lengths)]


@torch.no_grad()
def continuation_logprobs(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], window: int,
                          batch_size: int = 16, packing: bool = True, progress=None) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): (log-probability of the continuation in nats, whether greedy
    decoding would produce it). An empty continuation scores (0.0, True)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    rows = {}
    for i, (context, continuation) in enumerate(requests):
        if len(continuation) == 0:
            results[i] = (0.0, True)
        else:
            rows[i] = _row(context, continuation, window)
    order = sorted(rows, key=lambda i: -len(rows[i][0]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for first in range(0, len(order), batch_size):
        part = order[first:first + batch_size]
        logits = _forward_rows(model, [rows[i][0] for i in part], packing, device)
        for i, row_logits in zip(part, logits):
            ids, n = rows[i]
            targets = torch.tensor(ids[-n:], device=device)
            logp = F.log_softmax(row_logits[-n:].float(), dim=-1)
            picked = logp.gather(-1, targets[:, None]).squeeze(-1)
            greedy = bool((logp.argmax(-1) == targets).all())
            results[i] = (float(picked.double().sum()), greedy)
        if progress is not None:
            progress.update(len(part))
    model.train(was_training)
    return results
