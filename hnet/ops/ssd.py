"""The SSD (state-space duality) scan of Mamba-2, chunked, in plain PyTorch.

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T        (state h: headdim x d_state per head)
    y_t = h_t C_t + D * x_t

Within a chunk of `chunk_size` steps the recurrence is computed as masked matrix products (the
"quadratic" dual form); only the chunk-to-chunk state passing is a scan. `seq_idx` marks packed
sequences: the state is reset wherever it changes. This is the CPU path and the definition that the
Triton kernels must equal; `ssd_sequential` is the step-by-step recurrence the tests hold it to.

Shapes: x (b, l, h, p), dt (b, l, h) after softplus, A (h,), B and C (b, l, g, n) with h % g == 0,
D (h,) or None, initial_state (b, h, p, n), seq_idx (b, l) int.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch.utils.checkpoint import checkpoint

from hnet.ops.cache import update_rows_


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_state=None, seq_idx=None, return_final_state=False):
    y, state, _ = _scan(x, dt, A, B, C, chunk_size, D, initial_state, seq_idx)
    return (y, state) if return_final_state else y


def ssd_state_update(state, x, dt, dt_bias, A_log, B, C, D, mask=None):
    """One step of the recurrence, every row at once (decoding), with Mamba-2's dt = softplus(dt + dt_bias)
    and A = -exp(A_log): state (b, h, p, n) float32 becomes exp(dt A) state + dt x B^T in place, where
    mask (b,) is True (every row when None); returns y = new state C + D x, (b, h, p) float32 (for a
    masked row too, of the state it did not take). x (b, h, p), B and C (b, n) (one group) float32; dt
    (b, h) raw, dt_bias, A_log and D (h,). `hnet.ops.triton.mamba2_step` is the same in one launch."""
    dt = F.softplus(dt.float() + dt_bias.float())
    A = -torch.exp(A_log.float())
    dBx = (dt[..., None] * x)[..., None] * B[:, None, None, :]
    new = torch.exp(dt * A)[..., None, None] * state + dBx
    update_rows_(state, new, mask)
    return torch.einsum("bhpn,bn->bhp", new, C) + D.float()[:, None] * x


def ssd_scan_with_chunk_states(x, dt, A, B, C, chunk_size, D=None, seq_idx=None):
    """The scan from a zero state, and the state entering each chunk (b, c, h, p, n) float32: with
    seq_idx, that of the sequence live at the previous chunk's end (what `hnet.ops.ssd_varlen` reads)."""
    y, _, states_in = _scan(x, dt, A, B, C, chunk_size, D, None, seq_idx)
    return y, states_in


def _scan(x, dt, A, B, C, chunk_size, D, initial_state, seq_idx):
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 stays: tests take it as the truth
    x, dt, A, B, C = (t.to(work) for t in (x, dt, A, B, C))
    B = repeat(B, "b l g n -> b l (g r) n", r=h // g)
    C = repeat(C, "b l g n -> b l (g r) n", r=h // g)

    pad = (-l) % chunk_size
    if pad:  # padded steps have dt = 0: no decay and no input, so the state passes through them
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, pad)], dim=1)
    x, B, C = (rearrange(t, "b (c q) h d -> b c q h d", q=chunk_size) for t in (x, B, C))
    dt = rearrange(dt, "b (c q) h -> b h c q", q=chunk_size)
    a_cumsum = torch.cumsum(dt * A[None, :, None, None], dim=-1)  # (b, h, c, q)

    # 1. Within each chunk: y_i = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j. Its (q x q) per-chunk
    # matrices dominate memory, so under autograd they are recomputed in the backward instead of kept.
    sidx = None if seq_idx is None else rearrange(seq_idx, "b (c q) -> b c q", q=chunk_size)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C)):
        y = checkpoint(_intra_chunk, C, B, a_cumsum, dt, x, sidx, use_reentrant=False)
    else:
        y = _intra_chunk(C, B, a_cumsum, dt, x, sidx)

    # 2. The state each chunk adds by its end: sum_j exp(cs_last - cs_j) dt_j x_j B_j^T.
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # (b, h, c, q)
    if seq_idx is not None:  # only steps of the sequence that is live at the chunk's end count
        decay_to_end = decay_to_end * (sidx == sidx[..., -1:])[:, None]
    chunk_states = torch.einsum("bhcj,bhcj,bcjhp,bcjhn->bchpn", decay_to_end, dt, x, B)

    # 3. Pass states from chunk to chunk: the only sequential part, one step per chunk.
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(work)
    prev_seq = seq_idx[:, :1] if seq_idx is not None else None
    chunk_decay = torch.exp(a_cumsum[..., -1])  # (b, h, c)
    states_in = []
    for c in range(x.shape[1]):
        states_in.append(state)
        carry = chunk_decay[:, :, c, None, None]
        if seq_idx is not None:
            last = sidx[:, c, -1:]
            carry = carry * (last == prev_seq).to(work)[:, :, None, None]
            prev_seq = last
        state = carry * state + chunk_states[:, c]
    states_in = torch.stack(states_in, dim=1)  # (b, c, h, p, n): the state entering each chunk

    # 4. What the entering state contributes inside the chunk: C_i exp(cs_i) state_in.
    state_decay = torch.exp(a_cumsum)  # (b, h, c, q)
    if seq_idx is not None:
        entering_seq = torch.cat([seq_idx[:, :1], sidx[:, :-1, -1]], dim=1)  # (b, c)
        state_decay = state_decay * (sidx == entering_seq[..., None])[:, None]
    y = y + torch.einsum("bcihn,bchpn,bhci->bcihp", C, states_in, state_decay)

    y = rearrange(y, "b c q h p -> b (c q) h p")[:, :l]
    if D is not None:
        y = y + rearrange(x, "b c q h p -> b (c q) h p")[:, :l] * D.to(work).view(1, 1, h, -1)
    return y.to(out_dtype), state, states_in


def _intra_chunk(C, B, a_cumsum, dt, x, sidx):
    """The diagonal blocks: decay[i, j] = exp(cs_i - cs_j) for j <= i within the same packed sequence."""
    q = a_cumsum.shape[-1]
    keep = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    if sidx is not None:
        keep = keep & (sidx[..., :, None] == sidx[..., None, :])[:, None]  # (b, 1, c, q, q)
    decay = torch.exp((a_cumsum[..., :, None] - a_cumsum[..., None, :]).masked_fill(~keep, float("-inf")))
    scores = torch.einsum("bcihn,bcjhn->bhcij", C, B) * decay
    return torch.einsum("bhcij,bcjhp->bcihp", scores * dt[..., None, :], x)


def ssd_sequential(x, dt, A, B, C, D=None, initial_state=None, seq_idx=None):
    """The recurrence one step at a time, in float64: the definition the chunked scan is tested against."""
    b, l, h, p = x.shape
    g = B.shape[2]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    B = repeat(B, "b l g n -> b l (g r) n", r=h // g)
    C = repeat(C, "b l g n -> b l (g r) n", r=h // g)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.double().clone()
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            new_seq = (seq_idx[:, t] != seq_idx[:, t - 1]).double()[:, None, None, None]
            state = state * (1 - new_seq)
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, C[:, t])
        if D is not None:
            y = y + x[:, t] * D.double().view(1, h, -1)
        ys.append(y)
    return torch.stack(ys, dim=1), state
