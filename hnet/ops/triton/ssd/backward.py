"""The backward of the chunked SSD scan, written out by hand: the forward kernels recompute the chunk
cumsums and the states entering each chunk, and batched matrix products in torch do the rest, one
(b, c, h) chunk per batch entry. A Triton backward would fuse the (Q, Q) intermediates away; until then
this holds about five float32 tensors of (b, c, h, Q, Q) at once (1.6 GB each at batch 8 x 8192,
24 heads, chunk 256).

Per chunk, with s the cumulative dt A, M the causal same-sequence mask, G = C B^T,
    y = (G o L) diag(dt) x + diag(E) C S_in^T + D x,   L_ij = exp(s_i - s_j) M_ij, E_i = exp(s_i) [i in S_in's sequence]
    S_out = x^T diag(W dt) B,                         W_j = exp(s_last - s_j) [j in the last step's sequence]
    S_in(next) = a S_in + S_out,                      a = exp(s_last) [same sequence at both chunk ends]
and every term's gradient is a product of the same factors; ds is pushed through the cumsum last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hnet.ops.triton.ssd.chunk_cumsum import chunk_cumsum
from hnet.ops.triton.ssd.chunk_state import chunk_state
from hnet.ops.triton.ssd.state_passing import state_passing


def ssd_backward(dy, dfinal, x, dt, A, B, C, D, initial_state, seq_idx, chunk_size):
    """Gradients (dx, ddt, dA, dB, dC, dD, dinitial_state) of `ssd_chunked`; dy or dfinal may be None."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, Q = h // g, chunk_size
    dt_chunked, cs = chunk_cumsum(dt, A, Q)
    states = chunk_state(x, B.to(x.dtype), dt_chunked, cs, seq_idx)
    states_in, _ = state_passing(states, cs, initial_state, seq_idx, seqlen=l)  # (b, c, h, p, n)
    nc = cs.shape[2]
    pad = nc * Q - l

    def chunked(t):  # (b, l, k, d) -> (b, c, k, Q, d) float32, zero past l
        return F.pad(t.float(), (0, 0, 0, 0, 0, pad)).view(b, nc, Q, t.shape[2], t.shape[3]).transpose(2, 3)

    X, Bh, Ch = chunked(x), chunked(B).repeat_interleave(r, 2), chunked(C).repeat_interleave(r, 2)
    dY = chunked(dy) if dy is not None else torch.zeros_like(X)
    s, dtc = cs.transpose(1, 2), dt_chunked.transpose(1, 2)  # (b, c, h, Q)

    mask = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril().expand(b, nc, Q, Q)
    e_mask = w_mask = a_mask = torch.ones(b, nc, 1, dtype=torch.bool, device=x.device)
    if seq_idx is not None:
        sidx = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, pad)], 1).view(b, nc, Q)
        entering = torch.cat([seq_idx[:, :1], sidx[:, :-1, -1]], 1)  # (b, c): the sequence of S_in
        mask = mask & (sidx[..., :, None] == sidx[..., None, :])
        e_mask, w_mask = sidx == entering[..., None], sidx == sidx[..., -1:]
        a_mask = (sidx[..., -1] == entering)[..., None]
    E = torch.exp(s) * e_mask[:, :, None]
    W = torch.exp(s[..., -1:] - s) * w_mask[:, :, None]
    Wdt = W * dtc
    a = torch.exp(s[..., -1]) * a_mask  # (b, c, h)

    # The states, backwards through the chunks.
    dS_from_y = (dY * E[..., None]).transpose(-1, -2) @ Ch  # (b, c, h, p, n)
    grad_state = dfinal.float() if dfinal is not None else torch.zeros_like(states_in[:, 0])
    dS_out, da = torch.empty_like(states_in), torch.empty_like(a)
    for c in reversed(range(nc)):
        dS_out[:, c] = grad_state
        da[:, c] = (grad_state * states_in[:, c]).sum((-1, -2))
        grad_state = dS_from_y[:, c] + a[:, c, :, None, None] * grad_state
    dinit = grad_state if initial_state is not None else None

    # S_out = x^T diag(W dt) B
    XdS = X @ dS_out  # (b, c, h, Q, n)
    dX = Wdt[..., None] * (Bh @ dS_out.transpose(-1, -2))
    dBh = Wdt[..., None] * XdS
    dWdt = (XdS * Bh).sum(-1)
    ddt = dWdt * W
    t_w = dWdt * Wdt  # W_j = exp(s_last - s_j): +t_w at s_last, -t_w at s_j
    ds = -t_w
    ds[..., -1] += t_w.sum(-1)

    # diag(E) C S_in^T
    dCh = E[..., None] * (dY @ states_in)
    ds += (dY * (Ch @ states_in.transpose(-1, -2))).sum(-1) * E

    # (G o L) diag(dt) x, the quadratic part
    seg = (s[..., :, None] - s[..., None, :]).masked_fill(~mask[:, :, None], float("-inf"))
    GL = (Ch @ Bh.transpose(-1, -2)) * torch.exp(seg)  # (b, c, h, Q, Q)
    dScores = dY @ X.transpose(-1, -2)
    dX += (GL * dtc[..., None, :]).transpose(-1, -2) @ dY
    t_q = dScores * GL * dtc[..., None, :]
    ds += t_q.sum(-1) - t_q.sum(-2)
    ddt += (dScores * GL).sum(-2)
    dG = dScores * torch.exp(seg) * dtc[..., None, :]
    dCh += dG @ Bh
    dBh += dG.transpose(-1, -2) @ Ch

    ds[..., -1] += da * a
    d_dtA = ds.flip(-1).cumsum(-1).flip(-1)  # s is a cumsum of dt A over the chunk
    ddt += d_dtA * A.float()[None, None, :, None]
    dA = (d_dtA * dtc).sum((0, 1, 3))
    dD = None
    if D is not None:
        dX += D.float()[:, None, None] * dY
        dD = (dY * X).sum((0, 1, 3, 4))

    def unchunked(t, k):  # (b, c, k, Q, d) -> (b, l, k, d)
        return t.transpose(2, 3).reshape(b, nc * Q, k, t.shape[-1])[:, :l]

    dB = unchunked(dBh.view(b, nc, g, r, Q, n).sum(3), g)
    dC = unchunked(dCh.view(b, nc, g, r, Q, n).sum(3), g)
    ddt = ddt.permute(0, 1, 3, 2).reshape(b, nc * Q, h)[:, :l]
    return unchunked(dX, h), ddt, dA, dB, dC, dD, dinit
