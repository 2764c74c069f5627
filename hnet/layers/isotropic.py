"""A stack of blocks from a layout string ('m4', 'T22', 'm4T1'), ending in an RMSNorm."""

from __future__ import annotations

import re

from torch import nn

from hnet.layers.block import make_block
from hnet.layers.norm import RMSNorm
from hnet.ops.cache import write_caches
from hnet.ops.packed import bucketed_length, pad_packed, seq_idx_from_cu_seqlens

# A layout string: letters with counts. m / M: Mamba-2, t / T: attention; upper case adds a SwiGLU MLP.
LAYER_RE = re.compile(r"([mMtT])(\d+)")
LAYOUT_RE = re.compile(r"^(?:[mMtT]\d+)+$")


def parse_layer_string(spec: str) -> list[tuple[str, bool]]:
    """'m4T1' -> [('mamba', False)] * 4 + [('attn', True)]: (mixer kind, has SwiGLU MLP) per layer."""
    out = []
    for letter, count in LAYER_RE.findall(spec):
        out += [("mamba" if letter in "mM" else "attn", letter.isupper())] * int(count)
    return out


class Isotropic(nn.Module):
    """layout: a layer string; ssm: the Mamba-2 layers' keyword arguments (d_state, d_conv, expand,
    chunk_size); num_heads, rotary_emb_dim, window_size: the attention layers'.

    length_varies: the packed length changes from step to step (a stack over chunks, as many as a router
    made). Such a stack pads its input to a rounded length (`bucketed_length`) so that the matmul shapes
    repeat and cuBLAS does not choose its kernels anew every step; on CUDA only, as the CPU has no such
    cost. `bucket_lengths` True / False forces the padding on or off; None leaves it to that rule.
    """

    def __init__(self, layout: str, d_model: int, d_intermediate: int = 0, ssm: dict | None = None,
                 num_heads: int = 1, rotary_emb_dim: int = 0, window_size: int = -1,
                 length_varies: bool = False, device=None, dtype=None):
        super().__init__()
        specs = parse_layer_string(layout)
        self.layers = nn.ModuleList(
            make_block(kind, with_mlp, d_model, d_intermediate, ssm, num_heads=num_heads,
                       rotary_emb_dim=rotary_emb_dim, window_size=window_size, device=device, dtype=dtype)
            for kind, with_mlp in specs
        )
        self.rmsnorm = RMSNorm(d_model, device=device, dtype=dtype)
        # Residual additions per layer (2 with an MLP): scales the init of output projections.
        self.height = sum(2 if with_mlp else 1 for _, with_mlp in specs)
        self.has_attention = any(kind != "mamba" for kind, _ in specs)
        self.length_varies = length_varies
        self.bucket_lengths = None

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> list:
        """One cache per layer (Mamba2Cache or KVCache)."""
        return [layer.allocate_inference_cache(batch_size, max_seqlen, dtype) for layer in self.layers]

    def forward(self, x, cu_seqlens=None, cache=None, max_seqlen=None):
        """x (B, L, D), or packed (1, T, D) with cu_seqlens (every sequence independent; max_seqlen, the
        longest, if known, saves the attention a host sync).

        With a cache (a list from `allocate_inference_cache`), every row, or packed sequence i, continues its
        row of the cache, and the layers' states after it are written back (prefill).
        """
        n = x.shape[1]
        # Not in a prefill: the padding would be one more sequence, with no row of the cache to continue.
        length = bucketed_length(n) if cu_seqlens is not None and cache is None and self._buckets(x) else n
        padded = length > n
        if padded:
            x, cu_seqlens = pad_packed(x, cu_seqlens, length)
        seq_idx = None
        if cu_seqlens is not None:
            if cache is None:  # a prefill's layers continue their rows from cu_seqlens itself
                seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])
            if max_seqlen is None and self.has_attention:  # one host sync per stack, not one per layer
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            elif max_seqlen is not None and padded:
                max_seqlen = max(max_seqlen, length - n)  # the padding is a sequence too
        out = self.run_layers(x, cu_seqlens, seq_idx, max_seqlen, cache)
        return out[:, :n] if padded else out

    def run_layers(self, x, cu_seqlens, seq_idx, max_seqlen, cache=None):
        """The layers and the final norm on an input already padded, its seq_idx made: the part of the
        forward that `hnet.layers.cuda_graphs` replays."""
        h, residual = x, None
        # What the layers compute alike (rotary angles; in a prefill positions, gather indices): once. In a
        # prefill the layers' small cache writes are done together at the end (`write_caches`).
        shared = {} if cache is None else {"cache writes": []}
        for layer, layer_cache in zip(self.layers, [None] * len(self.layers) if cache is None else cache):
            h, residual = layer(h, residual, cu_seqlens, seq_idx, layer_cache, max_seqlen, shared)
        if cache is not None:
            write_caches(shared)
        return self._final_norm(h, residual)

    def _buckets(self, x) -> bool:
        if self.bucket_lengths is None:
            return self.length_varies and x.is_cuda
        return self.bucket_lengths

    def step(self, x, cache: list, mask=None):
        """One position per row: x (B, D) -> (B, D); the caches advance where mask (B,) is True."""
        h, residual, per_step = x, None, {}  # what the attention layers share at this step
        for layer, layer_cache in zip(self.layers, cache):
            h, residual = layer.step(h, residual, layer_cache, mask, per_step)
        return self._final_norm(h, residual)

    def _final_norm(self, h, residual):
        return self.rmsnorm.add(h, residual)[0]
