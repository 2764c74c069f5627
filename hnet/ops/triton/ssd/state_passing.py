"""Step 3 of the SSD scan, the only sequential part: the state entering each chunk,
state_{c+1} = exp(cs_last(c)) [same sequence at the ends of c-1 and c] state_c + states[c], from the
initial state (or zero). Parallel over (batch, head, state elements), sequential over chunks.

states (b, c, h, p, n), cs (b, h, c, Q) -> states_in (b, c, h, p, n), final state (b, h, p, n), float32.

`state_passing_bwd` runs the same recurrence backwards over the chunks (see there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hnet.ops.triton.host import cdiv, next_power_of_2
from hnet.ops.triton.tuning import launch_fastest


def block_candidates(size: int) -> list[dict]:
    """State elements per program, and warps: the loop over chunks is sequential and latency-bound, so
    smaller blocks (more programs in flight) may win. The first is the untuned default."""
    top = min(1024, next_power_of_2(size))
    return [dict(block=top, num_warps=4)] + [dict(block=max(top // k, 16), num_warps=w)
                                             for k in (4, 2, 1) for w in (2, 4, 8)]


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _state_passing(STATES, CS, SEQ, INIT, STATES_IN, FINAL, l, h, n_chunks, size, s_seq,
                   Q: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b, hd = tl.program_id(1), tl.program_id(2)
    live = e < size
    if HAS_INIT:
        state = tl.load(INIT + (b * h + hd) * size + e, mask=live, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_SEQ:
        prev_seq = tl.load(SEQ + b * s_seq)  # the initial state belongs to the first sequence
    for c in range(n_chunks):
        offset = ((b * n_chunks + c) * h + hd) * size + e
        tl.store(STATES_IN + offset, state, mask=live)
        carry = tl.exp(tl.load(CS + ((b * h + hd) * n_chunks + c) * Q + Q - 1))
        if HAS_SEQ:
            seq_last = tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1))
            carry = tl.where(seq_last == prev_seq, carry, 0.0)
            prev_seq = seq_last
        state = carry * state + tl.load(STATES + offset, mask=live, other=0.0)
    tl.store(FINAL + (b * h + hd) * size + e, state, mask=live)


def state_passing(states, cs, initial_state=None, seq_idx=None):
    b, n_chunks, h, p, n = states.shape
    Q = cs.shape[-1]
    states_in = torch.empty_like(states)
    final = torch.empty(b, h, p, n, device=states.device, dtype=torch.float32)
    init = initial_state.contiguous() if initial_state is not None else None
    l, s_seq = (seq_idx.shape[1], seq_idx.stride(0)) if seq_idx is not None else (0, 0)  # l, s_seq: read with seq_idx only

    def launch(block, **launch_options):
        _state_passing[(cdiv(p * n, block), b, h)](
            states, cs, seq_idx, init, states_in, final, l, h, n_chunks, p * n, s_seq,
            Q=Q, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_state is not None, BLOCK=block, **launch_options)

    launch_fastest("state_passing", (p * n, seq_idx is None, initial_state is None), b * n_chunks * Q,
                   block_candidates(p * n), launch)
    return states_in, final


@triton.jit(do_not_specialize=["l", "n_chunks", "s_seq"])
def _state_passing_bwd(DSTATES, STATES_IN, CS, SEQ, DFINAL, DS_OUT, DINIT, DS_CARRY, l, h, n_chunks, size, s_seq,
                       Q: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr,
                       BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b, hd = tl.program_id(1), tl.program_id(2)
    live = e < size
    if HAS_DFINAL:
        grad = tl.load(DFINAL + (b * h + hd) * size + e, mask=live, other=0.0).to(tl.float32)
    else:
        grad = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(n_chunks):
        c = n_chunks - 1 - k
        offset = ((b * n_chunks + c) * h + hd) * size + e
        carry = tl.exp(tl.load(CS + ((b * h + hd) * n_chunks + c) * Q + Q - 1))
        if HAS_SEQ:
            seq_last = tl.load(SEQ + b * s_seq + tl.minimum(c * Q + Q - 1, l - 1))
            carry = tl.where(seq_last == tl.load(SEQ + b * s_seq + tl.maximum(c * Q - 1, 0)), carry, 0.0)
        from_y = tl.load(DSTATES + offset, mask=live, other=0.0)
        tl.store(DS_OUT + offset, grad, mask=live)
        entering = tl.load(STATES_IN + offset, mask=live, other=0.0)
        tl.store(DS_CARRY + ((tl.program_id(0) * tl.num_programs(1) + b) * h + hd) * n_chunks + c,
                 carry * tl.sum(grad * entering, axis=0))
        grad = from_y + carry * grad
    if HAS_INIT:
        tl.store(DINIT + (b * h + hd) * size + e, grad, mask=live)


def state_passing_bwd(dstates, states_in, cs, dfinal=None, seq_idx=None, has_initial_state=False):
    """The recurrence state_{c+1} = a_c state_c + states[c] backwards: from dstates, the gradient that y puts
    on each chunk's entering state, to dS_out, the gradient of the state each chunk adds (dS_out[c] =
    d state_{c+1}). Returns (dS_out (b, c, h, p, n), d initial state or None, ds_carry (b, h, c)): ds_carry is
    the gradient on each chunk's last cumulative sum cs_last through the carry a_c = exp(cs_last),
    <dS_out[c], a_c states_in[c]>. cs_last also scales the decays inside states[c]; that part,
    <dS_out[c], states[c]>, is summed step by step by chunk_scan_bwd_dx from the very terms it subtracts
    again, which keeps the bf16 rounding of the two from leaving a difference (they cancel exactly in exact
    arithmetic)."""
    b, n_chunks, h, p, n = dstates.shape
    Q = cs.shape[-1]
    ds_out = torch.empty_like(dstates)
    dinit = torch.empty(b, h, p, n, device=dstates.device, dtype=torch.float32) if has_initial_state else None
    dfinal = dfinal.contiguous() if dfinal is not None else None
    l, s_seq = (seq_idx.shape[1], seq_idx.stride(0)) if seq_idx is not None else (0, 0)

    def launch(block, **launch_options):  # -> ds_carry, summed over its blocks of state elements
        n_blocks = cdiv(p * n, block)
        ds_carry = torch.empty(n_blocks, b, h, n_chunks, device=dstates.device, dtype=torch.float32)
        _state_passing_bwd[(n_blocks, b, h)](
            dstates, states_in, cs, seq_idx, dfinal, ds_out, dinit, ds_carry, l, h, n_chunks, p * n, s_seq,
            Q=Q, HAS_SEQ=seq_idx is not None, HAS_DFINAL=dfinal is not None, HAS_INIT=has_initial_state,
            BLOCK=block, **launch_options)
        return ds_carry.sum(0)

    ds_carry = launch_fastest("state_passing_bwd", (p * n, seq_idx is None, dfinal is None, has_initial_state),
                              b * n_chunks * Q, block_candidates(p * n), launch)
    return ds_out, dinit, ds_carry
