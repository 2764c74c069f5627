"""The dechunk EMA: e_c = p_c x_c + (1 - p_c) e_{c-1}, e_{-1} = 0, reset at every packed sequence.

A scalar-decay linear recurrence, so it is the SSD scan with one head whose state is the vector itself
(dt = -log(1 - p), A = -1, B = p / dt, C = 1). Shapes: x (b, m, d), p (b, m) in (0, 1), seq_idx (b, m).
"""

from __future__ import annotations

import torch

from hnet.ops.ssd import ssd_chunked


def ema_scan(x, p, seq_idx=None, chunk_size: int = 64):
    """The EMA in float32 (our reference path); returns float32."""
    p = p.float()
    dt = -torch.log1p(-p)
    y = ssd_chunked(
        x.float().unsqueeze(2),  # one head, headdim = d, d_state = 1
        dt.unsqueeze(-1),
        -torch.ones(1, device=x.device),
        (p / dt)[..., None, None],
        torch.ones_like(p)[..., None, None],
        chunk_size,
        seq_idx=seq_idx,
    )
    return y.squeeze(2)


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
