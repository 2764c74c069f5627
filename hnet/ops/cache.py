"""In-place updates of inference caches, row by row, and a decoding step's attention over a KV cache."""

import torch
import torch.nn.functional as F


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
