"""Inference caches seen from outside the layers that made them: a tree of dataclasses and lists of tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from hnet.layers.attention import KVCache, reserve_kv_cache
from hnet.layers.mamba2 import Mamba2Cache


def select_rows(cache, rows: slice):
    """The same cache structure (dataclasses, lists) with every tensor cut to `rows` of its batch dimension.

    A slice gives views, so what a prefill writes into the selection lands in the full cache (as long
    as it needs no more attention slots than the cache has: a view cannot grow).
    """
    if isinstance(cache, torch.Tensor):
        return cache[rows]
    if isinstance(cache, list):
        return [select_rows(c, rows) for c in cache]
    if dataclasses.is_dataclass(cache):
        fields = {f.name: select_rows(getattr(cache, f.name), rows) for f in dataclasses.fields(cache)}
        return dataclasses.replace(cache, **fields)
    if cache is None or isinstance(cache, (int, float, bool)):
        return cache
    raise TypeError(f"unexpected {type(cache).__name__} in an inference cache")


def tensors(cache, name: str = "cache") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor of the cache, in a fixed order: 'cache.encoder.0.ssm_state', ..."""
    if isinstance(cache, torch.Tensor):
        yield name, cache
    elif isinstance(cache, list):
        for i, c in enumerate(cache):
            yield from tensors(c, f"{name}.{i}")
    elif dataclasses.is_dataclass(cache):
        for f in dataclasses.fields(cache):
            yield from tensors(getattr(cache, f.name), f"{name}.{f.name}")


def layer_caches(cache, kinds=(KVCache, Mamba2Cache)) -> Iterator:
    """Every layer's cache of these kinds in the tree, in a fixed order."""
    if isinstance(cache, kinds):
        yield cache
    elif isinstance(cache, list):
        for c in cache:
            yield from layer_caches(c, kinds)
    elif dataclasses.is_dataclass(cache):
        for f in dataclasses.fields(cache):
            yield from layer_caches(getattr(cache, f.name), kinds)


def reserve(cache, steps: int) -> None:
    """Room for `steps` more positions in every row of every attention cache without a window (a decoding
    step does not make room: it must not sync with the host). One host sync per such cache."""
    for kv in layer_caches(cache, KVCache):
        if kv.window < 0:
            reserve_kv_cache(kv, int(kv.seqlen.max()) + steps)


def slots(cache) -> tuple[int, ...]:
    """The slot count of every attention cache: what a CUDA graph over the cache depends on."""
    return tuple(kv.k.shape[2] for kv in layer_caches(cache, KVCache))


def clear_(cache) -> None:
    """Every row back to the start (zeros, no position cached), keeping the tensors (and their size)."""
    for _, t in tensors(cache):
        t.zero_()
