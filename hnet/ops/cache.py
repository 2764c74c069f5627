"""In-place updates of inference caches, row by row."""

import torch


def update_rows_(cache, new, mask=None):
    """cache[b] = new[b] for every row b where mask (B,) is True (every row when mask is None).

    Decoding steps all rows of a batch at once, but a row whose position is not real at this step (no
    chunk boundary at an inner stage, a finished sequence) must keep its state.
    """
    if mask is not None:
        new = torch.where(mask.view(-1, *[1] * (new.dim() - 1)), new, cache)
    cache.copy_(new)
