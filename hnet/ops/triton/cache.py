"""A decoding step's KV cache kernels, each equal to its reference in `hnet.ops.cache`: the new key and
value written in one launch (`append_kv_`; op by op it was seven small kernels an attention layer and
byte: the row index, the slot, the masked rows' old entries gathered and kept, the two scatters), and the
attention over the filled slots (`attend_kv_cache`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2


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
    block_d = next_power_of_2(hd)
    block_h = min(next_power_of_2(H), max(1, 2048 // block_d))
    _append_kv[(B, cdiv(H, block_h))](
        cache_k, cache_v, seqlen, k, v, seqlen if mask is None else mask.view(torch.uint8), H, slots,
        *cache_k.stride()[:3], *cache_v.stride()[:3], k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=hd, HAS_MASK=mask is not None, BLOCK_H=block_h, BLOCK_D=block_d)


@triton.jit
def _attend_split(Q, CK, CV, SEQLEN, LIVE, ACC, M, L, n_heads, slots, split_len, scale,
                  sqb, sqh, sckb, sckh, scks, scvb, scvh, scvs,
                  HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row b, head h, slots [s * split_len, (s + 1) * split_len) of those filled: the online softmax's
    running max m, sum l and unnormalised output acc, into the workspace (l = 0: nothing read)."""
    bh, s = tl.program_id(0).to(tl.int64), tl.program_id(1)
    n_splits = tl.num_programs(1)
    b, h = bh // n_heads, bh % n_heads
    d = tl.arange(0, BLOCK_D)
    start = s * split_len
    filled = tl.minimum(tl.load(SEQLEN + b) + 1, slots)
    end = tl.minimum(start + split_len, filled)
    if HAS_MASK:
        end = tl.where(tl.load(LIVE + b) != 0, end, start)  # a row that does not advance reads nothing
    q = tl.load(Q + b * sqb + h * sqh + d, mask=d < HEAD_DIM, other=0.0).to(tl.float32) * scale
    m = tl.full((), float("-inf"), tl.float32)
    l = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        inside = (n < end)[:, None] & (d < HEAD_DIM)[None, :]
        k = tl.load(CK + b * sckb + h * sckh + n[:, None] * scks + d[None, :], mask=inside, other=0.0)
        score = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        score = tl.where(n < end, score, float("-inf"))
        m_new = tl.maximum(m, tl.max(score, axis=0))
        p = tl.exp(score - m_new)
        rescale = tl.exp(m - m_new)
        v = tl.load(CV + b * scvb + h * scvh + n[:, None] * scvs + d[None, :], mask=inside, other=0.0)
        acc = acc * rescale + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l = l * rescale + tl.sum(p, axis=0)
        m = m_new
    at = bh * n_splits + s
    tl.store(ACC + at * BLOCK_D + d, acc)
    tl.store(M + at, m)
    tl.store(L + at, l)


@triton.jit
def _attend_combine(ACC, M, L, OUT, n_heads, n_splits, sob, soh,
                    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row b, head h: the splits' partial softmaxes as one, normalised (0 where nothing was read); the splits
    BLOCK_S at a time, a pass for their largest max, a pass for the sums."""
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    d = tl.arange(0, BLOCK_D)
    m_all = tl.full((), -3.0e38, tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        l = tl.load(L + bh * n_splits + s, mask=s < n_splits, other=0.0)
        m = tl.load(M + bh * n_splits + s, mask=s < n_splits, other=float("-inf"))
        m_all = tl.maximum(m_all, tl.max(tl.where(l > 0, m, -3.0e38), axis=0))
    total = tl.zeros((), tl.float32)
    out = tl.zeros((BLOCK_D,), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        l = tl.load(L + bh * n_splits + s, mask=s < n_splits, other=0.0)
        m = tl.load(M + bh * n_splits + s, mask=s < n_splits, other=float("-inf"))
        weight = tl.where(l > 0, tl.exp(m - m_all), 0.0)
        acc = tl.load(ACC + (bh * n_splits + s)[:, None] * BLOCK_D + d[None, :], mask=(s < n_splits)[:, None],
                      other=0.0)
        total += tl.sum(weight * l, axis=0)
        out += tl.sum(weight[:, None] * acc, axis=0)
    tl.store(OUT + b * sob + h * soh + d, (out / tl.maximum(total, 1e-30)).to(OUT.dtype.element_ty),
             mask=d < HEAD_DIM)


# Slots a split reads at most. Short splits keep many programs busy when few (row, head) pairs read (a batch of
# one; an inner stage where few rows have a boundary) and the filled slots are many; a split past a row's
# filled slots exits at once. Session 14's first version aimed at 512 programs a step instead, and at 8k bytes
# of context its few busy programs each walked ~2,000 slots: 6.5 ms a step at batch 16 (RESULTS.md).
SPLIT_SLOTS = 256


def attend_kv_cache(q, cache_k, cache_v, seqlen, mask=None):
    """`hnet.ops.cache.attend_kv_cache` as split-K flash decoding: the filled slots of each (row, head) in
    splits read side by side, then one combine. It reads only the filled slots, and nothing of the rows
    that do not advance (an inner stage's rows without a boundary). The splits depend on the shapes only,
    so a CUDA graph can hold it."""
    B, H, slots, hd = cache_k.shape
    for name, t in (("q", q), ("cache_k", cache_k), ("cache_v", cache_v)):
        if t.stride(-1) != 1:
            raise ValueError(f"attend_kv_cache: {name} must have unit stride along the head dim")
    block_n, block_d = 64, next_power_of_2(hd)
    n_splits = cdiv(slots, SPLIT_SLOTS)
    acc = torch.empty(B * H * n_splits, block_d, device=q.device, dtype=torch.float32)
    m = torch.empty(B * H * n_splits, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    out = torch.empty(B, H, hd, device=q.device, dtype=q.dtype)
    _attend_split[(B * H, n_splits)](
        q, cache_k, cache_v, seqlen, seqlen if mask is None else mask.view(torch.uint8), acc, m, l, H, slots,
        SPLIT_SLOTS, hd ** -0.5, q.stride(0), q.stride(1), *cache_k.stride()[:3], *cache_v.stride()[:3],
        HEAD_DIM=hd, HAS_MASK=mask is not None, BLOCK_N=block_n, BLOCK_D=block_d)
    _attend_combine[(B * H,)](acc, m, l, out, H, n_splits, out.stride(0), out.stride(1),
                              HEAD_DIM=hd, BLOCK_S=min(32, next_power_of_2(n_splits)), BLOCK_D=block_d)
    return out
