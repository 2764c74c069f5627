"""A decoding step's key and value written into the KV cache in one launch; equals
`hnet.ops.cache.append_kv_`. Op by op it was seven small kernels an attention layer and byte (the row
index, the slot, the masked rows' old entries gathered and kept, the two scatters)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _append_kv(CK, CV, SEQLEN, K, V, LIVE, n_heads, slots, sckb, sckh, scks, scvb, scvh, scvs, skb, skh, svb, svh,
               HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Heads BLOCK_H of row b: K[b, h], V[b, h] into slot seqlen[b] % slots, if the row is live."""
    b = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    inside = (heads < n_heads)[:, None] & (d < HEAD_DIM)[None, :]
    slot = tl.load(SEQLEN + b + heads * 0) % slots  # (BLOCK_H,): the row's slot, as a vector
    if HAS_MASK:
        inside = inside & (tl.load(LIVE + b + heads * 0) != 0)[:, None]
    k = tl.load(K + b * skb + heads[:, None] * skh + d[None, :], mask=inside, other=0.0)
    v = tl.load(V + b * svb + heads[:, None] * svh + d[None, :], mask=inside, other=0.0)
    tl.store(CK + b * sckb + heads[:, None] * sckh + slot[:, None] * scks + d[None, :],
             k.to(CK.dtype.element_ty), mask=inside)
    tl.store(CV + b * scvb + heads[:, None] * scvh + slot[:, None] * scvs + d[None, :],
             v.to(CV.dtype.element_ty), mask=inside)


def append_kv_(cache_k, cache_v, seqlen, k, v, mask=None):
    B, H, slots, hd = cache_k.shape
    for name, t in (("cache_k", cache_k), ("cache_v", cache_v), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"append_kv_: {name} must have unit stride along the head dim")
    block_d = triton.next_power_of_2(hd)
    block_h = min(triton.next_power_of_2(H), max(1, 2048 // block_d))
    _append_kv[(B, triton.cdiv(H, block_h))](
        cache_k, cache_v, seqlen, k, v, seqlen if mask is None else mask.view(torch.uint8), H, slots,
        *cache_k.stride()[:3], *cache_v.stride()[:3], k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=hd, HAS_MASK=mask is not None, BLOCK_H=block_h, BLOCK_D=block_d)
