"""Views of some rows of an inference cache, whatever the layers that made it."""

from __future__ import annotations

import dataclasses

import torch


def select_rows(cache, rows: slice):
    """The same cache structure (dataclasses, lists) with every tensor cut to `rows` of its batch dimension.

    A slice gives views, so what a prefill writes into the selection lands in the full cache.
    """
    if isinstance(cache, torch.Tensor):
        return cache[rows]
    if isinstance(cache, list):
        return [select_rows(c, rows) for c in cache]
    if dataclasses.is_dataclass(cache):
        fields = {f.name: select_rows(getattr(cache, f.name), rows) for f in dataclasses.fields(cache)}
        return dataclasses.replace(cache, **fields)
    if cache is None:
        return None
    raise TypeError(f"unexpected {type(cache).__name__} in an inference cache")
