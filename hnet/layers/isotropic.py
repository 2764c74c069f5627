"""A stack of blocks from a layout string ('m4', 'T22', 'm4T1'), ending in an RMSNorm."""

from __future__ import annotations

from torch import nn

from hnet.config import HNetConfig, parse_layer_string
from hnet.layers.block import make_block
from hnet.layers.norm import RMSNorm
from hnet.ops.packed import bucketed_length, pad_packed, seq_idx_from_cu_seqlens


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
        self.has_attention = any(kind != "mamba" for kind, _ in specs)
        # Inside an H-Net (stage > 0) a packed stack runs over chunks, as many as the router made: padded
        # to a rounded length (`bucketed_length`) so the matmul shapes repeat and cuBLAS does not choose its
        # kernels anew every step. None: on CUDA only (the CPU has no such cost); True / False force it.
        self.stage = stage
        self.bucket_lengths = None

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> list:
        """One cache per layer (Mamba2Cache or KVCache)."""
        return [layer.allocate_inference_cache(batch_size, max_seqlen, dtype) for layer in self.layers]

    def forward(self, x, cu_seqlens=None, cache=None):
        """x (B, L, D), or packed (1, T, D) with cu_seqlens (every sequence independent).

        With a cache (a list from `allocate_inference_cache`), the layers' states are written into it (prefill).
        """
        n = x.shape[1]
        length = bucketed_length(n) if cu_seqlens is not None and self._buckets(x) else n
        padded = length > n
        if padded:
            x, cu_seqlens = pad_packed(x, cu_seqlens, length)
        seq_idx = max_seqlen = None
        if cu_seqlens is not None:
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])
            if self.has_attention:  # one host sync per stack, not one per attention layer
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        h, residual = x, None
        for layer, layer_cache in zip(self.layers, cache or [None] * len(self.layers)):
            h, residual = layer(h, residual, cu_seqlens, seq_idx, layer_cache, max_seqlen)
        out = self._final_norm(h, residual)
        return out[:, :n] if padded else out

    def _buckets(self, x) -> bool:
        if self.bucket_lengths is None:
            return self.stage > 0 and x.is_cuda
        return self.bucket_lengths

    def step(self, x, cache: list, mask=None):
        """One position per row: x (B, D) -> (B, D); the caches advance where mask (B,) is True."""
        h, residual = x, None
        for layer, layer_cache in zip(self.layers, cache):
            h, residual = layer.step(h, residual, layer_cache, mask)
        return self._final_norm(h, residual)

    def _final_norm(self, h, residual):
        return self.rmsnorm.add(h, residual)[0]
