"""The SSD scan over packed sequences that each start from a state of their own and end in one: the
prefill of a decoding cache, where every sequence continues one row of the cache (a prompt in pieces,
or a conversation that goes on).

The scan itself runs from zero states (the reference's or the Triton kernels', chosen by the caller);
the rest is linear algebra around it:

    final_i = S_i + exp(sum_{t in i} dt_t A) h0_i
    y_t    += exp(sum_{j in i, j <= t} dt_j A) C_t h0_i            (t in sequence i)

where S_i, the state sequence i reaches from zero, is read from the scan's chunk states: the state
entering the chunk that holds i's last position (when i was already live there), decayed to that
position, plus the sum over the positions of i in that chunk, as step 2 of `ssd.py` sums them.

Shapes: x (1, T, h, p), dt (1, T, h) after softplus, A (h,), B and C (1, T, g, n), cu_seqlens (s + 1,)
(empty sequences allowed), initial_states (s, h, p, n) or None. Returns y (1, T, h, p) in x's dtype and
the final states (s, h, p, n) float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hnet.ops.packed import seq_idx_from_cu_seqlens


@dataclass
class VarlenLayout:
    """What `ssd_varlen` reads of cu_seqlens, for a length and a chunk size: the same for every layer of a
    stack in one prefill, so made once (`ssd_varlen`'s shared)."""

    seq_idx: torch.Tensor  # (1, T) int32
    lengths: torch.Tensor  # (s,)
    empty: torch.Tensor  # (s, 1, 1, 1) float: 1 for an empty sequence
    chunk: torch.Tensor  # (s,): the chunk that holds the sequence's last position
    pos: torch.Tensor  # (s, Q): the positions of that chunk (clamped to T - 1)
    upto_last: torch.Tensor  # (s, Q, 1) float: at or before the sequence's last position
    mine: torch.Tensor  # (s, Q, 1) float: in the sequence, at or before its last position
    live_at_chunk_start: torch.Tensor  # (s, 1, 1, 1) float: the sequence began before that chunk

    @classmethod
    def of(cls, cu, T: int, chunk_size: int) -> VarlenLayout:
        starts, last = cu[:-1], cu[1:] - 1
        chunk_start = last.clamp(min=0) // chunk_size * chunk_size
        pos = chunk_start[:, None] + torch.arange(chunk_size, device=cu.device)  # (s, Q)
        upto_last = pos <= last[:, None]
        mine = upto_last & (pos >= starts[:, None])
        live = (starts < chunk_start) & (last >= starts)
        lengths = cu[1:] - cu[:-1]
        return cls(seq_idx_from_cu_seqlens(cu, T), lengths, (lengths == 0).float()[:, None, None, None],
                   chunk_start // chunk_size, pos.clamp(max=T - 1), upto_last[..., None].float(),
                   mine[..., None].float(), live.float()[:, None, None, None])


def ssd_varlen(x, dt, A, B, C, chunk_size, cu_seqlens, D=None, initial_states=None, scan=None, shared=None):
    """scan: `ssd_scan_with_chunk_states` of the reference or of the Triton kernels (same signature).
    shared: a dict that keeps the `VarlenLayout` of cu_seqlens for the next call (the next layer)."""
    T, h = x.shape[1], x.shape[2]
    cu = cu_seqlens.long()
    shared = {} if shared is None else shared
    if ("ssd_varlen", T, chunk_size) not in shared:
        shared["ssd_varlen", T, chunk_size] = VarlenLayout.of(cu, T, chunk_size)
    layout = shared["ssd_varlen", T, chunk_size]
    y, states_in = scan(x, dt, A, B, C, chunk_size, D, layout.seq_idx)
    final = _final_states(x[0], dt[0], A, B[0], states_in[0], layout)
    if initial_states is None:
        return y, final
    h0 = initial_states.float()
    lengths = layout.lengths
    final = final + layout.empty * h0  # an empty sequence keeps its state
    # The sequences that carry a state in (a host sync): a first prefill has none, and costs nothing more.
    carried = torch.nonzero((lengths > 0) & h0.flatten(1).any(1)).squeeze(1)
    if carried.numel() == 0:
        return y, final
    heads_per_group = h // B.shape[2]
    # Their own decays from their starts, as rows (c, longest, h): a cumulative sum per sequence.
    longest = int(lengths[carried].max())
    offset = torch.arange(longest, device=x.device)
    valid = offset[None, :] < lengths[carried, None]
    pos = (cu[carried, None] + offset[None, :]).clamp(max=T - 1)
    decay = torch.exp(torch.cumsum(dt[0, pos].float() * A.float() * valid[..., None], dim=1))
    C_rows = C[0, pos].float().repeat_interleave(heads_per_group, dim=2)  # (c, longest, h, n)
    y_from_h0 = torch.einsum("clhn,chpn->clhp", C_rows, h0[carried]) * decay[..., None]
    y = y[0].float().index_put((pos[valid],), y_from_h0[valid], accumulate=True).to(y.dtype).unsqueeze(0)
    total_decay = decay[torch.arange(len(carried), device=x.device), lengths[carried] - 1]  # (c, h)
    return y, final.index_add(0, carried, total_decay[..., None, None] * h0[carried])


def _final_states(x, dt, A, B, states_in, layout: VarlenLayout):
    """The state each sequence reaches from zero: x (T, h, p), dt (T, h), B (T, g, n), states_in
    (c, h, p, n) -> (s, h, p, n) float32 (zero for an empty sequence)."""
    s, Q = layout.pos.shape
    h, p = x.shape[1:]
    g, n = B.shape[1:]
    dt_tail = dt[layout.pos].float() * layout.upto_last  # (s, Q, h): no decay past the last position
    cs = torch.cumsum(dt_tail * A.float(), dim=1)
    cs_last = cs[:, -1]  # (s, h): decay from the chunk's start through the last position
    weight = torch.exp(cs_last[:, None] - cs) * dt_tail * layout.mine
    # heads in groups of h // g, each group reading its own B
    x_tail = x[layout.pos].float().view(s, Q, g, h // g, p)
    final = torch.einsum("sqgk,sqgkp,sqgn->sgkpn", weight.view(s, Q, g, h // g), x_tail, B[layout.pos].float())
    carried = states_in[layout.chunk].float() * torch.exp(cs_last)[..., None, None]
    return final.reshape(s, h, p, n) + carried * layout.live_at_chunk_start
