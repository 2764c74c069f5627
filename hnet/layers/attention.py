"""Causal multi-head attention with partial rotary embeddings and an optional sliding window."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hnet.ops.cache import cache_zeros, write_cache
from hnet.ops.dispatch import append_kv_, attend_kv_cache, reference_requested, rotary_qkv, rotary_qkv_into
from hnet.ops.rotary import rotary_tables
from hnet.ops.packed import as_packed, bucketed_length, positions_in_sequence, sequence_of_position, unpack

try:  # flash attention over packed sequences, CUDA only (torch >= 2.10; a window from 2.11)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None
_VARLEN_WINDOW = varlen_attn is not None and "window_size" in inspect.signature(varlen_attn).parameters


@dataclass
class KVCache:
    """Keys (rotated) and values of the positions a query may still attend to.

    With a sliding window w the cache is a ring of w + 1 slots (position t in slot t mod (w + 1)): it
    holds exactly the window, for any length. Without one, position t is in slot t: a prefill makes room
    as it needs it (`reserve_kv_cache`), a decoding step does not (it must not sync with the host), so
    whoever steps past the slots reserves them first.
    """

    k: torch.Tensor  # (B, H, slots, head_dim)
    v: torch.Tensor  # (B, H, slots, head_dim)
    seqlen: torch.Tensor  # (B,) int64: positions cached so far (the next position's index)
    window: int = -1  # the layer's window: -1, slots that grow with the sequence; else a ring of window + 1
    # Set for one prefill by `hnet.generation.prefill.mark_empty` (one host read for every layer's cache):
    # whether no row holds a position; None: the prefill asks itself.
    empty: bool | None = None

    def holds_nothing(self) -> torch.Tensor:
        return (self.seqlen == 0).all()


def reserve_kv_cache(cache: KVCache, positions: int) -> None:
    """Room for `positions` positions in every row of a cache without a window (a ring has all it needs).
    The tensors are replaced by larger ones, rounded up so that a growing sequence reallocates seldom:
    anything holding the old ones (a view of some rows, a captured CUDA graph) must be made anew."""
    slots = cache.k.shape[2]
    if cache.window >= 0 or positions <= slots:
        return
    if cache.k._base is not None:
        raise ValueError(f"KV cache full: {slots} slots, {positions} positions needed, and the cache is a view "
                         "of another (select_rows), which cannot grow: allocate it with room for them")
    grown = bucketed_length(positions)
    pad = (0, 0, 0, grown - slots)
    cache.k, cache.v = F.pad(cache.k, pad), F.pad(cache.v, pad)


class CausalSelfAttention(nn.Module):
    """Query i attends keys j with i - window <= j <= i (window -1: every j <= i)."""

    def __init__(self, d_model: int, num_heads: int, rotary_emb_dim: int = 0, window_size: int = -1, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.rotary_emb_dim = rotary_emb_dim
        self.window_size = window_size
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False, device=device, dtype=dtype)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> KVCache:
        w = self.Wqkv.weight
        slots = max_seqlen if self.window_size < 0 else self.window_size + 1
        shape = (batch_size, self.num_heads, slots, self.head_dim)
        kw = {"device": w.device, "dtype": dtype or w.dtype}
        seqlen = cache_zeros(batch_size, dtype=torch.long, device=w.device)
        return KVCache(cache_zeros(shape, **kw), cache_zeros(shape, **kw), seqlen, self.window_size)

    def forward(self, x, cu_seqlens=None, cache=None, max_seqlen=None, shared: dict | None = None):
        """x (B, L, D); or packed (1, T, D) with cu_seqlens, every sequence attending only to itself
        (max_seqlen: the longest, if known, saves a host sync).

        With a cache (prefill), every row continues its row of the cache: its positions follow those
        cached, its queries also attend to the cached keys in their window, and its keys and values are
        written into the cache. Packed, sequence i continues row i (an empty one leaves it as it is).
        shared: a dict the layers of a stack pass along (they see the same positions; in a prefill their
        caches hold the same ones too), which keeps what they compute alike (rotary angles; in a prefill
        positions and cache slots too): made by the first.
        """
        shared = {} if shared is None else shared
        if cache is not None:
            return self._prefill(x, cu_seqlens, cache, max_seqlen, shared)
        if cu_seqlens is not None:
            if self._takes_varlen(x):
                return self._forward_varlen(x, cu_seqlens, max_seqlen, shared)
            # Reference: right-padded rows, as many as sequences, each as long as the longest.
            rows, valid = unpack(x[0], cu_seqlens, max_seqlen)
            return self.forward(rows)[valid].unsqueeze(0)
        B, L, _ = x.shape
        qkv = self.Wqkv(x).view(B * L, 3, self.num_heads, self.head_dim)  # the rows' positions one after another
        if self.rotary_emb_dim > 0:  # the packed path's op (one kernel where it runs), every row's angles alike
            if ("rows", B, L, self.rotary_emb_dim) not in shared:
                cos, sin = rotary_tables(torch.arange(L, device=x.device), self.rotary_emb_dim)
                shared["rows", B, L, self.rotary_emb_dim] = cos.repeat(B, 1), sin.repeat(B, 1)
            q, k, v = rotary_qkv(qkv, *shared["rows", B, L, self.rotary_emb_dim])
        else:
            q, k, v = qkv.unbind(1)
        out = self._causal(*(t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)))
        return self.out_proj(out.transpose(1, 2).reshape(B, L, -1))

    def _causal(self, q, k, v):
        """q, k, v (B, H, L, hd): causal attention within the window."""
        L = q.shape[2]
        if self.window_size < 0 or self.window_size >= L - 1:  # the window reaches back to 0: plain causal (flash)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        i = torch.arange(L, device=q.device)
        offset = i[:, None] - i[None, :]
        allowed = (offset >= 0) & (offset <= self.window_size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    def _projection_dtype(self, x):
        """Wqkv's output dtype: autocast's where it runs (a stack's first layer may read a float32 input)."""
        return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype

    def _takes_varlen(self, x) -> bool:
        """Flash attention over the packed positions (no padding) where it runs: CUDA, half precision."""
        return (varlen_attn is not None and x.is_cuda and self._projection_dtype(x) in (torch.float16, torch.bfloat16)
                and (_VARLEN_WINDOW or self.window_size < 0) and not reference_requested())

    def _forward_varlen(self, x, cu_seqlens, max_seqlen=None, shared: dict | None = None):
        T, shared = x.shape[1], {} if shared is None else shared
        # squeeze, not x[0]: select's backward zero-fills a (1, T, D) gradient and copies into it.
        qkv = self.Wqkv(x.squeeze(0)).view(T, 3, self.num_heads, self.head_dim)
        if self.rotary_emb_dim > 0:
            if ("packed", self.rotary_emb_dim) not in shared:
                positions = positions_in_sequence(cu_seqlens, T)
                shared["packed", self.rotary_emb_dim] = rotary_tables(positions, self.rotary_emb_dim)
            q, k, v = rotary_qkv(qkv, *shared["packed", self.rotary_emb_dim])
        else:
            q, k, v = qkv.unbind(1)
        return self.out_proj(self._varlen(q, k, v, cu_seqlens, max_seqlen, shared).reshape(1, T, -1))

    def _varlen(self, q, k, v, cu_seqlens, max_seqlen, shared: dict):
        """Flash attention of packed q, k, v (T, H, hd), each sequence causal within itself (shared: the
        stack's, which keeps cu_seqlens in int32 for all its layers)."""
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if "cu32" not in shared:
            shared["cu32"] = cu_seqlens.to(torch.int32)
        cu = shared["cu32"]
        if _VARLEN_WINDOW:
            return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, window_size=(self.window_size, 0))
        return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, is_causal=True)

    def _prefill(self, x, cu_seqlens, cache: KVCache, max_seqlen, shared: dict):
        if cu_seqlens is None:
            packed, cu_seqlens = as_packed(x)
            return self._prefill(packed, cu_seqlens, cache, x.shape[1], shared).view_as(x)
        T, cu = x.shape[1], cu_seqlens.long()
        empty, cache.empty = cache.empty, None  # known for this prefill only
        # One row, no ring, too few slots, not a view (select_rows): if it holds nothing, a new cache replaces it.
        one_row_may_grow = cu.shape[0] == 2 and cache.window < 0 and cache.k.shape[2] < T and cache.k._base is None
        if empty and one_row_may_grow and self.rotary_emb_dim > 0 and cache.k.dtype == self._projection_dtype(x):
            return self._prefill_fresh_row(x, cu, cache, shared)
        if "prefill" not in shared:
            lengths, past = cu[1:] - cu[:-1], cache.seqlen
            positions = positions_in_sequence(cu, T)  # (T,): each position's index in its row
            if empty and max_seqlen is not None:  # nothing cached: the room needed is the longest sequence
                longest_after, longest_before = max_seqlen, 0
            else:  # one sync: the room the rows need, and whether a row that has new positions has cached ones
                # (rows with no new positions may: a long prompt's pieces, or many prompts, take several forwards)
                longest_after, longest_before = torch.stack(((past + lengths).max(),
                                                             (past * (lengths > 0)).max())).tolist()
                positions = positions + past[sequence_of_position(cu, T)]
            shared["prefill"] = lengths, longest_after, longest_before, positions
        lengths, longest_after, longest_before, positions = shared["prefill"]
        # Not `_prefill_fresh_row`'s case (no rotary, a cache dtype of its own, or not known to be empty): a row
        # that grows gets its keys and values padded (one op each where growing, then writing, takes two); a view
        # cannot be replaced, and reserve_kv_cache says so.
        one_row_grows = one_row_may_grow and longest_before == 0
        if not one_row_grows:
            reserve_kv_cache(cache, longest_after)
        qkv = self.Wqkv(x[0]).view(T, 3, self.num_heads, self.head_dim)
        if self.rotary_emb_dim > 0:
            if ("rotary", self.rotary_emb_dim) not in shared:
                shared["rotary", self.rotary_emb_dim] = rotary_tables(positions, self.rotary_emb_dim)
            q, k, v = rotary_qkv(qkv, *shared["rotary", self.rotary_emb_dim])
        else:
            q, k, v = qkv.unbind(1)
        if longest_before > 0:
            out = self._attend_after_cache(q, k, v, cu, cache, longest_before)
        elif self._takes_varlen(x):  # fresh rows: the attention of the forward
            out = self._varlen(q, k, v, cu, max_seqlen, shared)
        else:
            if "live" not in shared:
                shared["live"] = _live_sequences(cu)[1]
            rows, valid = unpack(torch.stack((q, k, v), dim=1), shared["live"], max_seqlen)  # (s, L, 3, H, hd)
            out = self._causal(*rows.permute(2, 0, 3, 1, 4).unbind(0)).transpose(1, 2)[valid]
        if one_row_grows:
            pad = (0, 0, 0, bucketed_length(T) - T)
            cache.k = F.pad(k.transpose(0, 1)[None].to(cache.k.dtype), pad)
            cache.v = F.pad(v.transpose(0, 1)[None].to(cache.v.dtype), pad)
        elif lengths.shape[0] == 1 and cache.window < 0:  # one row, no ring: its new positions fill slots in order
            cache.k[0, :, longest_before:longest_before + T] = k.transpose(0, 1)
            cache.v[0, :, longest_before:longest_before + T] = v.transpose(0, 1)
        else:  # every position's key and value into its slot; of a ring, only the last `slots` of each row
            slots = cache.k.shape[2]
            if ("slots", slots) not in shared:
                seq = sequence_of_position(cu, T)
                if lengths.shape[0] == 1:  # one row: its last `slots` new positions (no host read to count them)
                    kept = torch.arange(max(0, T - slots), T, device=x.device)
                else:  # each row's positions from its last `slots` (its cache not yet advanced)
                    kept = torch.nonzero(positions >= (cache.seqlen + lengths)[seq] - slots).squeeze(1)
                shared["slots", slots] = kept, seq[kept], positions[kept] % slots
            kept, rows, slot = shared["slots", slots]
            cache.k[rows, :, slot] = k[kept].to(cache.k.dtype)
            cache.v[rows, :, slot] = v[kept].to(cache.v.dtype)
        write_cache(shared, cache.seqlen, lengths, add=True)
        return self.out_proj(out.reshape(1, T, -1))

    def _prefill_fresh_row(self, x, cu, cache: KVCache, shared: dict):
        """One row that holds nothing, too few slots, rotary (the common first prefill of one prompt): the
        rotation writes the keys and values into a new cache, (1, H, slots, hd) each seen position-major, the
        slots past T zeroed, and the unpacked forward's attention reads them there. Equal to the general
        path, in the fewest ops a layer."""
        T = x.shape[1]
        key = "fresh row", self.rotary_emb_dim
        if key not in shared:  # the stack's positions are 0 .. T - 1
            shared[key] = rotary_tables(torch.arange(T, device=x.device), self.rotary_emb_dim), cu[1:] - cu[:-1]
        tables, lengths = shared[key]
        qkv = self.Wqkv(x[0]).view(T, 3, self.num_heads, self.head_dim)
        cache.k, cache.v = (qkv.new_empty(1, self.num_heads, bucketed_length(T), self.head_dim) for _ in "kv")
        q = rotary_qkv_into(qkv, *tables, cache.k[0].transpose(0, 1), cache.v[0].transpose(0, 1))
        out = self._causal(q.view(1, T, self.num_heads, self.head_dim).transpose(1, 2), cache.k[:, :, :T],
                           cache.v[:, :, :T])
        write_cache(shared, cache.seqlen, lengths, add=True)
        return self.out_proj(out.transpose(1, 2).reshape(1, T, -1))

    def _attend_after_cache(self, q, k, v, cu, cache: KVCache, longest_before: int):
        """Packed q, k, v (T, H, hd): each query attends to the cached keys of its row and to the new ones
        up to itself, within the window. As padded rows (s, L), one per nonempty sequence, against
        (s, cached slots + L) keys with a mask: the reference, and what runs on CUDA too (a prefill that
        continues a cache is rarer than a fresh one, which takes flash attention)."""
        live, cu = _live_sequences(cu)
        rows, valid = unpack(torch.stack((q, k, v), dim=1), cu)  # (s, L, 3, H, hd), (s, L)
        q, k, v = rows.permute(2, 0, 3, 1, 4).unbind(0)  # (s, H, L, hd) each
        s, L, past = rows.shape[0], rows.shape[1], cache.seqlen[live]
        slots = cache.k.shape[2]
        read = slots if cache.window >= 0 else min(slots, longest_before)
        slot = torch.arange(read, device=q.device)[None, :]
        # The position each slot holds: slot i itself, or of a ring the latest position before `past` that is
        # i modulo the slots (negative: never written).
        held = slot if cache.window < 0 else past[:, None] - 1 - (past[:, None] - 1 - slot) % slots  # (s or 1, read)
        query = past[:, None, None] + torch.arange(L, device=q.device)[None, :, None]  # (s, L, 1)
        sees_cached = (held >= 0)[:, None, :] & (held < past[:, None])[:, None, :]
        j = torch.arange(L, device=q.device)
        sees_new = j[None, :] <= j[:, None]  # (L, L): new key j' for query j
        if self.window_size >= 0:
            sees_cached = sees_cached & (query - held[:, None, :] <= self.window_size)
            sees_new = sees_new & (j[:, None] - j[None, :] <= self.window_size)
        allowed = torch.cat([sees_cached.expand(s, L, read), sees_new.expand(s, L, L)], dim=2)[:, None]
        keys = torch.cat([cache.k[live, :, :read].to(q.dtype), k], dim=2)
        values = torch.cat([cache.v[live, :, :read].to(q.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)  # padded queries see themselves
        return out.transpose(1, 2)[valid]

    def step(self, x, cache: KVCache, mask=None, per_step: dict | None = None):
        """One position: x (B, D) -> (B, D), each row at its own position `cache.seqlen`. Rows where mask
        (B,) is False keep their cache, bit for bit (their output is meaningless). per_step: what every
        attention layer of a stack computes alike at this step, as their caches hold the same positions
        (the rotary angles, the rows that advance): made by the stack's first layer, reused by the others.

        No host sync, so that a CUDA graph can hold it: the query reads the filled slots of its row (the
        kernel; the reference reads every slot, masked). A cache without a window must have a free slot in
        every row (`reserve_kv_cache`); on CPU that is checked (a RuntimeError).
        """
        B = x.shape[0]
        slots = cache.k.shape[2]
        if cache.window < 0 and not x.is_cuda:  # no host read: on CPU the check is immediate
            torch._assert_async((cache.seqlen < slots).all(), f"KV cache full: allocated for {slots} positions")
        per_step = {} if per_step is None else per_step
        qkv = self.Wqkv(x).view(B, 3, self.num_heads, self.head_dim)
        if self.rotary_emb_dim > 0:  # the packed path's kernel (one launch for q and k where it runs)
            if ("rotary", self.rotary_emb_dim) not in per_step:  # a position a row
                per_step["rotary", self.rotary_emb_dim] = rotary_tables(cache.seqlen, self.rotary_emb_dim)
            q, k, v = rotary_qkv(qkv, *per_step["rotary", self.rotary_emb_dim])
        else:
            q, k, v = qkv.unbind(1)  # (B, H, hd) each
        append_kv_(cache.k, cache.v, cache.seqlen, k, v, mask)
        out = attend_kv_cache(q, cache.k, cache.v, cache.seqlen, mask)
        if mask is not None and "advance" not in per_step:
            per_step["advance"] = mask.long()
        cache.seqlen += 1 if mask is None else per_step["advance"]
        return self.out_proj(out.reshape(B, -1))


def _live_sequences(cu):
    """The nonempty packed sequences: their numbers and their own cu_seqlens (a host sync)."""
    lengths = cu[1:] - cu[:-1]
    live = torch.nonzero(lengths).squeeze(1)
    return live, F.pad(torch.cumsum(lengths[live], 0), (1, 0))
