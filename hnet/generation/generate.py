"""Sampling bytes from a model: prefill each prompt, then decode every row one byte per step.

Batching. Each prompt is prefilled alone (batch 1) into its row of the batched cache: left padding
would shift the routing's p = 1 away from the first real byte, and right padding would leave each
row's state at a different position. Decoding then steps all rows together, each at its own
position; inside an H-Net, a row's main network advances only at the steps where it starts a chunk
(see `HNet.step`), so every row computes exactly what it would alone.

Stopping. A row stops after `max_new_bytes` or once its new bytes end with one of the `stop` sequences,
which is kept in the output (so a caller can tell a stop from running out of bytes). No byte stops a
row by itself: the official generate.py ends at byte 255 (pass stop=b"\\xff" for its checkpoints), and
our loader starts every document with BOS 254, so a model trained here ends one with b"\\xfe".

`stream_ids` is the loop over ids (a BPE model's too, for lm-eval's generate_until); `stream` and
`generate` are its face for byte models.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hnet.constants import BOS
from hnet.generation.cache import select_rows
from hnet.generation.sampling import check_sampling, sample


@torch.inference_mode()
def stream_ids(model, rows, max_new: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stops=(), seed: int | None = None) -> Iterator[list[int | None]]:
    """The loop itself, over ids: rows are id lists as the model reads them (BOS included, if any) and
    stops are id sequences. Yields, at each step, the new id of every row (None for a row that has stopped).
    A caller may stop iterating at any step (a BPE model's stop strings are found in decoded text)."""
    check_sampling(temperature, top_k, top_p)
    if max_new < 0:
        raise ValueError(f"the number of new ids must be >= 0, got {max_new}")
    stops = [list(s) for s in stops]
    if any(not s for s in stops):
        raise ValueError("a stop sequence must not be empty")
    if any(not row for row in rows):
        raise ValueError("each row must hold at least one id (BOS)")
    if not rows or max_new == 0:
        return

    device = model.embeddings.weight.device
    cache = model.allocate_inference_cache(len(rows), max(map(len, rows)) + max_new)
    logits = torch.cat([
        model(torch.tensor([list(row)], device=device), cache=select_rows(cache, slice(i, i + 1))).logits[:, -1]
        for i, row in enumerate(rows)
    ])
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    generated = [[] for _ in rows]
    live = [True] * len(rows)
    for step in range(max_new):
        ids = sample(logits, temperature, top_k, top_p, generator)
        new = []
        for i, token in enumerate(ids.tolist()):
            new.append(token if live[i] else None)
            if live[i]:
                generated[i].append(token)
                live[i] = not any(generated[i][-len(s):] == s for s in stops)
        yield new
        if step == max_new - 1 or not any(live):
            return
        logits = model.step(ids, cache, mask=torch.tensor(live, device=device)).logits


def stream(model, prompts, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop=None, seed: int | None = None) -> Iterator[list[bytes]]:
    """Yields, at each step, the new byte of every row (b"" for a row that has stopped)."""
    if isinstance(prompts, (bytes, bytearray, str)) or not all(isinstance(p, (bytes, bytearray)) for p in prompts):
        raise ValueError("prompts must be a list of bytes")
    if max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
    stops = [bytes(stop)] if isinstance(stop, (bytes, bytearray)) else [bytes(s) for s in stop or []]
    rows = [[BOS, *p] for p in prompts]
    for new in stream_ids(model, rows, max_new_bytes, temperature, top_k, top_p, stops, seed):
        yield [b"" if token is None else bytes([token]) for token in new]


def generate(model, prompts, max_new_bytes: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop=None, seed: int | None = None) -> list[bytes]:
    """The new bytes of each prompt (without the prompt).

    prompts: a list of bytes (BOS 254 is prepended to each). temperature 0 (or top_k=1) is greedy.
    stop: bytes or a list of them; a row ends with the first one it generates (kept in its output).
    seed: makes sampling reproducible (a torch.Generator on the model's device).
    """
    out = [bytearray() for _ in prompts]
    for new in stream(model, prompts, max_new_bytes, temperature, top_k, top_p, stop, seed):
        for o, n in zip(out, new):
            o += n
    return [bytes(o) for o in out]
