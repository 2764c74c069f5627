"""The dechunk EMA: e_c = p_c x_c + (1 - p_c) e_{c-1}, e_{-1} = 0, reset at every packed sequence.

A scalar-decay linear recurrence, computed in chunks of `chunk_size` steps as the SSD scan is: inside a
chunk as a masked matrix product, from chunk to chunk as a short scan. The decay from step s to step t
is exp of the sum of log(1 - p) over exactly the steps s+1..t (a masked cumulative sum, the "segsum" of
the Mamba-2 paper's listing), not the difference of two cumulative sums: near p = 1 each step adds
about -9, and over a chunk such a difference loses four digits of float32. Shapes: x (b, m, d), p (b, m)
in (0, 1), seq_idx (b, m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ema_scan(x, p, seq_idx=None, chunk_size: int = 64):
    """The EMA in float32 (float64 stays); our reference path, and the definition the kernel equals."""
    b, m, d = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, p = x.to(work), p.to(work)
    log_keep = torch.log1p(-p)
    if seq_idx is not None:  # a new sequence keeps nothing of the one before
        new_sequence = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0), value=False)
        log_keep = log_keep.masked_fill(new_sequence, float("-inf"))
    pad = (-m) % chunk_size  # padded steps (past the end, dropped): p = 0, log_keep = 0
    x, p, log_keep = F.pad(x, (0, 0, 0, pad)), F.pad(p, (0, pad)), F.pad(log_keep, (0, pad))
    q = chunk_size
    x, p, log_keep = x.view(b, -1, q, d), p.view(b, -1, q), log_keep.view(b, -1, q)

    # Within a chunk: e_t = sum_{s <= t} p_s exp(segsum[t, s]) x_s, segsum[t, s] = sum_{s < k <= t} log_keep_k.
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()  # t >= s
    steps = log_keep[..., :, None].expand(-1, -1, q, q).masked_fill(~causal.tril(-1), 0.0)  # [t, s]: log_keep_t, t > s
    segsum = torch.cumsum(steps, dim=-2).masked_fill(~causal, float("-inf"))
    e = torch.einsum("bcts,bcsd->bctd", torch.exp(segsum) * p[..., None, :], x)
    # From chunk to chunk: the value entering a chunk, decayed through step t of it.
    carried = torch.exp(torch.cumsum(log_keep, dim=-1))  # (b, c, q)
    state, out = x.new_zeros(b, d), []
    for c in range(x.shape[1]):
        out.append(e[:, c] + carried[:, c, :, None] * state[:, None])
        state = out[-1][:, -1]
    return torch.cat(out, dim=1)[:, :m]


def ema_scan_official_bf16(x, p, seq_idx=None, block_size: int = 256):
    """The EMA as the official DeChunkLayer computes it by default: mamba_ssm's SSD kernel fed bf16 inputs.

    Reproduces its cast points: dt = bf16(log(1/(1-p))), x' = bf16(x / dt), B = bf16(p); per block of
    `block_size` chunks the weights W[t, s] = bf16(B_s exp(cs_t - cs_s) dt_s) (cs: cumulative -dt in the
    block) meet x' in a float32 sum whose result is rounded to bf16. The state carried between blocks is
    kept in bf16. Returns float32 holding bf16 values.
    """
    bf16 = torch.bfloat16
    p = p.float()
    dt = torch.log(1 / (1 - p)).to(bf16)
    xs = (x.float() / dt.float()[..., None]).to(bf16).float()
    B = p.to(bf16).float()
    dt = dt.float()
    b, m, d = x.shape
    out = []
    state = x.new_zeros(b, d, dtype=torch.float32)
    prev_seq = seq_idx[:, :1] if seq_idx is not None else None
    for start in range(0, m, block_size):
        sl = slice(start, start + block_size)
        cs = torch.cumsum(-dt[:, sl], dim=1)  # (b, q)
        causal = torch.ones(cs.shape[1], cs.shape[1], dtype=torch.bool, device=x.device).tril()
        W = B[:, None, sl] * torch.exp(torch.clamp(cs[:, :, None] - cs[:, None, :], max=0)) * dt[:, None, sl]
        W = (W * causal).to(bf16).float()  # (b, t, s)
        carry = torch.exp(cs)  # (b, q): decay of the entering state
        if seq_idx is not None:
            sq = seq_idx[:, sl]
            W = W * (sq[:, :, None] == sq[:, None, :])
            carry = carry * (sq == prev_seq)
            prev_seq = sq[:, -1:]
        e = (torch.einsum("bts,bsd->btd", W, xs[:, sl]) + carry[..., None] * state[:, None]).to(bf16).float()
        out.append(e)
        state = e[:, -1]
    return torch.cat(out, dim=1)
