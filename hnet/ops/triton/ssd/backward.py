"""The backward of the chunked SSD scan in Triton. Per chunk, with s the cumulative dt A, M the causal
same-sequence mask and G = C B^T,
    y = (G o L) diag(dt) x + diag(E) C S_in^T + D x,   L_ij = exp(s_i - s_j) M_ij, E_i = exp(s_i) [i in S_in's sequence]
    S_out = x^T diag(W dt) B,                         W_j = exp(s_last - s_j) [j in the last step's sequence]
    S_in(next) = a S_in + S_out,                      a = exp(s_last) [same sequence at both chunk ends]

From the forward's dt (chunked) and s, and the entering states and C.B (recomputed here by the forward's
own kernels unless the forward kept them: bit for bit what it computed), the steps, each a kernel next to
the forward kernel it inverts:
 1. dS_in from y: sum_i E_i dy_i^T C_i (chunk_state weighted from the chunk's start);
 2. the state recurrence backwards (state_passing_bwd), from it dS_out;
 3. dx, dD and ddt's part through the added state (chunk_scan_bwd_dx); the gradient on C.B summed over
    each group's heads, with the within-chunk parts of ds and ddt (chunk_scan_bwd_dcb); from it, with the
    entering and leaving states' terms, dC (chunk_scan_bwd_dc) and dB (chunk_state_bwd_db). The decayed
    (Q, Q) blocks are rebuilt in registers; only dCB, one per group, is stored, so that the products with
    B and C (n wide) are paid once per group, not once per head;
 4. ds through the cumulative sum into ddt and dA (chunk_cumsum_bwd).
Every exp(s_i - s_j) contributes +t to ds_i and -t to ds_j with t_j = dt_j x (its part of ddt_j), so ds
needs only the per-row sums of step 3, ddt's direct part and, at each chunk's last step, the carry's part
(step 2) and the added state's (summed by chunk_scan_bwd_dx from the same terms it puts into ddt: with
bf16 operands, taking it from the stored chunk states instead left a rounding difference that the
cumulative sums carry into dA, 3-7% of it at 8 x 8192 on the GPU).
"""

from __future__ import annotations

from hnet.ops.triton.ssd.chunk_cumsum import chunk_cumsum_bwd
from hnet.ops.triton.ssd.chunk_scan import chunk_scan_bwd_dc, chunk_scan_bwd_dcb, chunk_scan_bwd_dx
from hnet.ops.triton.ssd.chunk_state import chunk_cb, chunk_state, chunk_state_bwd_db, state_grad_from_output
from hnet.ops.triton.ssd.state_passing import state_passing, state_passing_bwd


def ssd_backward(dy, dfinal, x, A, B, C, D, seq_idx, saved, initial_state, dt_raw=None, dt_bias=None, out=None):
    """Gradients (dx, ddt, dA, dB, dC, dD, dinitial_state, ddt_bias) of `ssd_chunked` given the forward's saved
    intermediates (dt_chunked, cs, states_in, cb), states_in and cb None where the forward did not keep them;
    dy or dfinal may be None. initial_state: the forward's (or None), which the recomputed states start from.

    dt_raw, dt_bias: the forward took dt = softplus(dt_raw + dt_bias) itself (`ssd_forward`'s); ddt is then
    dt_raw's gradient and ddt_bias dt_bias's (else None). out: (dx, dB, dC, ddt), tensors of any strides (each
    or None) to write the gradients into, in their own dtypes: Mamba-2's fused mixer passes slices of the
    gradient buffers it hands to the convolution and to in_proj."""
    dt_chunked, cs, states_in, cb = saved
    dx_out, db_out, dc_out, ddt_out = out if out is not None else (None,) * 4
    l = x.shape[1]
    B, C = B.to(x.dtype), C.to(x.dtype)
    if states_in is None:  # the forward's steps 2 and 3, on the same inputs
        states_in, _ = state_passing(chunk_state(x, B, dt_chunked, cs, seq_idx), cs, initial_state, seq_idx)
        cb = chunk_cb(B, C, cs.shape[-1])
    dy = dy.to(x.dtype) if dy is not None else x.new_zeros(x.shape)
    dstates = state_grad_from_output(dy, C, cs, seq_idx)
    dstates, dinit, ds_carry = state_passing_bwd(dstates, states_in, cs, dfinal, seq_idx, initial_state is not None)
    dx, ddt_state, dD, ds_state = chunk_scan_bwd_dx(x, B, dy, cb, dt_chunked, cs, dstates, D, seq_idx, dx=dx_out)
    dcb, ds_row, ddt_col = chunk_scan_bwd_dcb(x, dy, cb, dt_chunked, cs, seq_idx)
    dC, ds_entering = chunk_scan_bwd_dc(B, C, dy, dcb, cs, states_in, seq_idx, out=dc_out)
    dB = chunk_state_bwd_db(x, C, dcb, dt_chunked, cs, dstates, seq_idx, out=db_out)
    ddt, dA, ddt_bias = chunk_cumsum_bwd((ds_row, ds_entering), (ddt_state, ddt_col), dt_chunked, (ds_carry, ds_state),
                                         A, l, dt_raw, dt_bias, out=ddt_out)
    return dx, ddt, dA, dB, dC, dD, dinit, ddt_bias
