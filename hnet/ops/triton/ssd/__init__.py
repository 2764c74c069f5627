"""The chunked SSD scan of Mamba-2 in Triton; equals `hnet.ops.ssd.ssd_chunked` (same signature, and
keep_states).

The forward is four steps, each a kernel in its own file and testable alone: chunk_cumsum (dA_cumsum
per chunk), chunk_state (the state each chunk adds, and C.B per chunk), state_passing (the state
entering each chunk) and chunk_scan (the output). The backward (backward.py) takes the forward's
intermediates, recomputing the entering states and C.B unless they were kept, and runs a backward kernel
per step, each next to the forward kernel it inverts.
"""

from __future__ import annotations

import torch

from hnet.ops.triton.ssd.backward import ssd_backward
from hnet.ops.triton.ssd.chunk_cumsum import chunk_cumsum
from hnet.ops.triton.ssd.chunk_scan import chunk_scan
from hnet.ops.triton.ssd.chunk_state import chunk_cb, chunk_state
from hnet.ops.triton.ssd.state_passing import state_passing


def ssd_forward(x, dt, A, B, C, chunk_size, D=None, initial_state=None, seq_idx=None, dt_bias=None,
                dt_softplus=False, keep_states=False):
    """(y, final_state, saved): y in x's dtype, the final state float32, and saved = (dt_chunked, cs, states_in,
    cb), the intermediates the backward needs. Unless keep_states, states_in and cb are None and the backward
    recomputes them from x, B, C and the initial state: keeping them costs states_in, x's size in float32 at
    state 128 and head dim 64, and C.B, and spares the backward a third of the forward's work. With dt_bias
    and dt_softplus the dt taken is softplus(dt + dt_bias), computed by chunk_cumsum (Mamba-2's raw projection)."""
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"ssd_chunked (Triton): chunk_size must be a power of 2 and >= 16, got {chunk_size}")
    B, C = B.to(x.dtype), C.to(x.dtype)
    dt_chunked, cs = chunk_cumsum(dt, A, chunk_size, dt_bias, dt_softplus)
    states = chunk_state(x, B, dt_chunked, cs, seq_idx)
    states_in, final_state = state_passing(states, cs, initial_state, seq_idx)
    cb = chunk_cb(B, C, chunk_size)
    y = chunk_scan(x, C, cb, dt_chunked, cs, states_in, D, seq_idx)
    return y, final_state, (dt_chunked, cs, *((states_in, cb) if keep_states else (None, None)))


class _SSDChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, keep_states):
        y, final_state, saved = ssd_forward(x, dt, A, B, C, chunk_size, D, initial_state, seq_idx,
                                            keep_states=keep_states)
        ctx.save_for_backward(x, A, B, C, D, initial_state, seq_idx, *saved)
        ctx.input_dtypes = [t.dtype if t is not None else None for t in (x, dt, A, B, C, D, initial_state)]
        ctx.set_materialize_grads(False)
        return y, final_state

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, A, B, C, D, initial_state, seq_idx, *saved = ctx.saved_tensors
        *grads, _ = ssd_backward(dy, dfinal, x, A, B, C, D, seq_idx, saved, initial_state)
        return (*(g.to(dtype) if g is not None else None for g, dtype in zip(grads, ctx.input_dtypes)), None, None,
                None)


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_state=None, seq_idx=None, return_final_state=False,
                keep_states=False):
    """keep_states: the backward takes the entering states and C.B from the forward rather than recompute them."""
    if seq_idx is not None:
        seq_idx = seq_idx.contiguous()  # the kernels, forward and backward, step through it with unit stride
    y, final_state = _SSDChunked.apply(x, dt, A, B, C, D, initial_state, seq_idx, chunk_size, keep_states)
    return (y, final_state) if return_final_state else y


def ssd_scan_with_chunk_states(x, dt, A, B, C, chunk_size, D=None, seq_idx=None):
    """As the reference's: the scan from a zero state and the state entering each chunk (inference only)."""
    if seq_idx is not None:
        seq_idx = seq_idx.contiguous()
    y, _, (_, _, states_in, _) = ssd_forward(x, dt, A, B, C, chunk_size, D, None, seq_idx, keep_states=True)
    return y, states_in
