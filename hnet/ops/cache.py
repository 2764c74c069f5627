"""Inference caches: their zeroed tensors, in-place updates row by row, and a decoding step's attention over
a KV cache."""

from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_zeroed_later: list | None = None  # inside `zeroed_together`: the tensors `cache_zeros` made


def cache_zeros(*shape, **kwargs):
    """torch.zeros, for a tensor of an inference cache; inside `zeroed_together()` an empty tensor that is
    zeroed with the others when the block ends."""
    if _zeroed_later is None:
        return torch.zeros(*shape, **kwargs)
    t = torch.empty(*shape, **kwargs)
    _zeroed_later.append(t)
    return t


@contextmanager
def zeroed_together():
    """Zero the cache tensors made inside in one op per dtype (`_foreach_zero_`: a launch or a few on CUDA),
    where a zeros each is one launch each: over a hundred for a 2-stage model's cache."""
    global _zeroed_later
    previous, _zeroed_later = _zeroed_later, []
    try:
        yield
        made = _zeroed_later
    finally:
        _zeroed_later = previous
    by_kind = defaultdict(list)  # foreach ops take one launch for tensors of one dtype and device
    for t in made:
        if t.numel():
            by_kind[t.dtype, t.device].append(t)
    for tensors in by_kind.values():
        torch._foreach_zero_(tensors)


def write_cache(shared: dict, dst, src, add: bool = False) -> None:
    """dst.copy_(src) (or dst.add_(src)) for a layer's cache in a prefill: now, or, where the layer's stack
    collects them (shared["cache writes"], a list), all its layers' at the end (`write_caches`)."""
    later = shared.get("cache writes")
    if later is not None:
        later.append((add, dst, src))
    elif add:
        dst.add_(src)
    else:
        dst.copy_(src)


def write_caches(shared: dict) -> None:
    """The writes a stack's layers left (`write_cache`): one foreach op for those alike, where each was an op
    (a launch each on CUDA: a 22-layer stack's positions advanced, its SSM states stored)."""
    alike = defaultdict(lambda: ([], []))
    for add, dst, src in shared.pop("cache writes", []):
        dsts, srcs = alike[add, dst.dtype, src.dtype, dst.device]
        dsts.append(dst)
        srcs.append(src)
    for (add, *_), (dsts, srcs) in alike.items():
        (torch._foreach_add_ if add else torch._foreach_copy_)(dsts, srcs)


def keep_last_(cache, packed, cu_seqlens) -> None:
    """cache[b] = packed[0, t] for t the last position of packed sequence b, for every sequence with positions
    (a prefill: sequence b continues row b; an empty one leaves its row as it is)."""
    if cu_seqlens.shape[0] == 2:  # one sequence: it has the positions (a prefill runs on some)
        cache.copy_(packed[0, -1:])
        return
    cu = cu_seqlens.long()
    update_rows_(cache, packed[0, (cu[1:] - 1).clamp(min=0)], cu[1:] > cu[:-1])


def update_rows_(cache, new, mask=None):
    """cache[b] = new[b] for every row b where mask (B,) is True (every row when mask is None).

    Decoding steps all rows of a batch at once, but a row whose position is not real at this step (no
    chunk boundary at an inner stage, a finished sequence) must keep its state.
    """
    if mask is not None:
        new = torch.where(mask.view(-1, *[1] * (new.dim() - 1)), new, cache)
    cache.copy_(new)


def append_kv_(cache_k, cache_v, seqlen, k, v, mask=None):
    """Each row's new key and value (B, H, head_dim) into its slot `seqlen % slots` of cache_k and cache_v
    (B, H, slots, head_dim), in their dtype, where mask (B,) is True (every row when None); seqlen (B,)
    is not advanced here. `hnet.ops.triton.cache.append_kv_` is the same in one launch."""
    rows = torch.arange(k.shape[0], device=k.device)
    slot = seqlen % cache_k.shape[2]
    k, v = k.to(cache_k.dtype), v.to(cache_v.dtype)
    if mask is not None:
        k = torch.where(mask[:, None, None], k, cache_k[rows, :, slot])
        v = torch.where(mask[:, None, None], v, cache_v[rows, :, slot])
    cache_k[rows, :, slot] = k
    cache_v[rows, :, slot] = v


def attend_kv_cache(q, cache_k, cache_v, seqlen, mask=None):
    """A decoding step's attention: each row's query q (B, H, head_dim) against its filled slots of
    cache_k and cache_v (B, H, slots, head_dim), the slots up to `seqlen` (B,) (the step's own key is in
    slot `seqlen % slots`, written before; a ring is full once seqlen >= slots). Softmax scale
    1/sqrt(head_dim). Returns (B, H, head_dim) in q's dtype. Rows where mask (B,) is False are not needed
    (their output is meaningless): here they are computed anyway, the kernel skips them."""
    slots = cache_k.shape[2]
    filled = torch.arange(slots, device=q.device)[None, :] <= seqlen[:, None]
    k, v = cache_k.to(q.dtype), cache_v.to(q.dtype)
    return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=filled[:, None, None, :])[:, :, 0]
