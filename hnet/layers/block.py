"""The pre-norm residual block; the residual stream is kept in float32."""

from __future__ import annotations

from torch import nn

from hnet.layers.attention import CausalSelfAttention
from hnet.layers.mamba2 import Mamba2
from hnet.layers.mlp import SwiGLU
from hnet.layers.norm import RMSNorm


class Block(nn.Module):
    """r = h + r; h = mixer(norm1(r)); with an MLP also r = h + r; h = mlp(norm2(r)). Returns (h, r)."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp: nn.Module | None = None, device=None, dtype=None):
        super().__init__()
        self.norm1 = RMSNorm(d_model, device=device, dtype=dtype)
        self.mixer = mixer
        if mlp is not None:
            self.norm2 = RMSNorm(d_model, device=device, dtype=dtype)
            self.mlp = mlp
        else:
            self.mlp = None

    def forward(self, h, residual=None, cu_seqlens=None, seq_idx=None, cache=None, max_seqlen=None,
                shared: dict | None = None):
        """shared: what the layers of a stack compute alike (`Isotropic.run_layers`)."""
        if isinstance(self.mixer, Mamba2):
            return self._residual(h, residual, lambda x: self.mixer(x, seq_idx=seq_idx, cache=cache,
                                                                    cu_seqlens=cu_seqlens, shared=shared))
        return self._residual(h, residual, lambda x: self.mixer(x, cu_seqlens, cache, max_seqlen, shared))

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype)

    def step(self, h, residual, cache, mask=None, per_step: dict | None = None):
        """One position per row: h (B, D); the mixer's cache advances where mask (B,) is True. per_step:
        shared by the attention layers of a stack at one step (`CausalSelfAttention.step`)."""
        if isinstance(self.mixer, CausalSelfAttention):
            return self._residual(h, residual, lambda x: self.mixer.step(x, cache, mask, per_step))
        return self._residual(h, residual, lambda x: self.mixer.step(x, cache, mask))

    def _residual(self, h, residual, mix):
        normed, residual = self.norm1.add(h, residual)
        h = mix(normed)
        if self.mlp is not None:
            normed, residual = self.norm2.add(h, residual)
            h = self.mlp(normed)
        return h, residual


def make_block(kind: str, with_mlp: bool, d_model: int, d_intermediate: int, ssm: dict | None = None,
               num_heads: int = 1, rotary_emb_dim: int = 0, window_size: int = -1, device=None, dtype=None) -> Block:
    """ssm: Mamba2's keyword arguments (d_state, d_conv, expand, chunk_size)."""
    kw = {"device": device, "dtype": dtype}
    if kind == "mamba":
        mixer = Mamba2(d_model, **(ssm or {}), **kw)
    else:
        mixer = CausalSelfAttention(d_model, num_heads, rotary_emb_dim, window_size, **kw)
    mlp = SwiGLU(d_model, d_intermediate, **kw) if with_mlp else None
    return Block(mixer, d_model, mlp, **kw)
