"""A stack of blocks from a layout string ('m4', 'T22', 'm4T1'), ending in an RMSNorm."""

from __future__ import annotations

from torch import nn

from hnet.config import HNetConfig, parse_layer_string
from hnet.layers.block import make_block
from hnet.layers.norm import RMSNorm
from hnet.ops.packed import seq_idx_from_cu_seqlens


class Isotropic(nn.Module):
    def __init__(self, config: HNetConfig, stage: int, layout: str, device=None, dtype=None):
        super().__init__()
        d = config.d_model[stage]
        attn = config.attn_cfg
        specs = parse_layer_string(layout)
        self.layers = nn.ModuleList(
            make_block(
                kind, with_mlp, d, config.d_intermediate[stage], config.ssm_cfg,
                num_heads=attn.num_heads[stage] if attn.num_heads else 1,
                rotary_emb_dim=attn.rotary_emb_dim[stage] if attn.rotary_emb_dim else 0,
                window_size=attn.window_size[stage] if attn.window_size else -1,
                device=device, dtype=dtype,
            )
            for kind, with_mlp in specs
        )
        self.rmsnorm = RMSNorm(d, device=device, dtype=dtype)
        # Residual additions per layer (2 with an MLP): scales the init of output projections.
        self.height = sum(2 if with_mlp else 1 for _, with_mlp in specs)

    def forward(self, x, cu_seqlens=None):
        """x (B, L, D), or packed (1, T, D) with cu_seqlens (every sequence independent)."""
        seq_idx = None if cu_seqlens is None else seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])
        h, residual = x, None
        for layer in self.layers:
            h, residual = layer(h, residual, cu_seqlens=cu_seqlens, seq_idx=seq_idx)
        residual = h.float() if residual is None else h.float() + residual
        return self.rmsnorm(residual).to(x.dtype)

