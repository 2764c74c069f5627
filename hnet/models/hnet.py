"""The H-Net: one recursive stage (`HNet`) and the byte-level language model around it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from hnet.chunking.chunk import DechunkCache, chunk, dechunk, dechunk_step, plug_back
from hnet.chunking.routing import RoutingCache, RoutingModule, RoutingOutput
from hnet.config import HNetConfig
from hnet.layers.isotropic import Isotropic
from hnet.models.weights import WeightsMixin
from hnet.ops.cache import cache_zeros, zeroed_together
from hnet.ops.packed import as_packed


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, L, vocab) or (1, T, vocab) packed
    routing: list[RoutingOutput] = field(default_factory=list)  # one per routing stage, outermost first


@dataclass
class HNetCache:
    """The inference cache of one stage: the innermost stage has only `main_network` (its layers' caches)."""

    main_network: list | HNetCache
    encoder: list | None = None
    routing: RoutingCache | None = None
    dechunk: DechunkCache | None = None
    decoder: list | None = None


def _cut(h, d_in: int):
    """h's first d_in channels: h itself where that is all of them (a slice's backward would zero-fill a
    gradient of h's size and copy into it)."""
    return h if h.shape[-1] == d_in else h[..., :d_in]


def _stack(config: HNetConfig, stage: int, layout: str, device=None, dtype=None) -> Isotropic:
    """The stack of layer string `layout` at `stage`, with that stage's widths and attention settings."""
    attn = config.attn_cfg
    return Isotropic(
        layout, config.d_model[stage], config.d_intermediate[stage], dataclasses.asdict(config.ssm_cfg),
        num_heads=attn.num_heads[stage] if attn.num_heads else 1,
        rotary_emb_dim=attn.rotary_emb_dim[stage] if attn.rotary_emb_dim else 0,
        window_size=attn.window_size[stage] if attn.window_size else -1,
        length_varies=stage > 0,  # inside an H-Net a stack runs over chunks, as many as the router made
        device=device, dtype=dtype,
    )


class HNet(nn.Module):
    """Stage s: encoder -> routing -> chunk -> main network (stage s+1 or an Isotropic) -> dechunk -> decoder.

    The innermost stage is only its main network. A stage wider than its input appends the learned
    `pad_dimension` to every position and cuts its output back to the input width.
    """

    def __init__(self, config: HNetConfig, stage: int = 0, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.stage = stage
        d = config.d_model[stage]
        layout = config.stage_layout(stage)
        self.is_innermost = len(layout) == 1
        if self.is_innermost:
            self.main_network = _stack(config, stage, layout[0], **kw)
        else:
            self.encoder = _stack(config, stage, layout[0], **kw)
            self.main_network = HNet(config, stage + 1, **kw)
            self.decoder = _stack(config, stage, layout[2], **kw)
            self.routing_module = RoutingModule(d, **kw)
            # fp32 weights, as the residual is computed in fp32 (`_residual`); zero weight at init.
            self.residual_proj = nn.Linear(d, d, device=device, dtype=torch.float32)
            nn.init.zeros_(self.residual_proj.weight)
        pad = d - config.d_model[stage - 1] if stage > 0 else 0
        self.pad_dimension = nn.Parameter(torch.zeros(pad, **kw)) if pad > 0 else None
        self.official_bf16_dechunk = False

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> HNetCache:
        """Every stage's attention caches get `max_seqlen` slots (a row's chunks never outnumber its bytes);
        those without a window grow as a prefill needs, so 0 is fine when `reserve` makes room for steps."""
        main = self.main_network.allocate_inference_cache(batch_size, max_seqlen, dtype)
        if self.is_innermost:
            return HNetCache(main)
        last_value = cache_zeros(batch_size, self.residual_proj.in_features, device=self.residual_proj.weight.device)
        return HNetCache(
            main,
            self.encoder.allocate_inference_cache(batch_size, max_seqlen, dtype),
            self.routing_module.allocate_inference_cache(batch_size, max_seqlen, dtype),
            DechunkCache(last_value),
            self.decoder.allocate_inference_cache(batch_size, max_seqlen, dtype),
        )

    def forward(self, x, cu_seqlens=None, mask=None, cache=None, max_seqlen=None):
        """x (B, L, D_in) with mask (B, L), or packed (1, T, D_in) with cu_seqlens (max_seqlen: its longest
        sequence, if known: an attention stack needs it). Returns (h, routing).

        With a cache (prefill), packed sequence i continues row i of the cache from where the row is (a
        fresh cache: from its start; a prompt in pieces: after the earlier pieces; an empty sequence leaves
        its row alone), and the state after the sequence's last position is written back.
        """
        d_in = x.shape[-1]
        x = self._pad(x)
        if self.is_innermost:
            inner_cache = None if cache is None else cache.main_network
            return _cut(self.main_network(x, cu_seqlens, cache=inner_cache, max_seqlen=max_seqlen), d_in), []
        if cache is None:
            cache = HNetCache(None)  # nothing to fill
        elif cu_seqlens is None:
            raise ValueError("a prefill of an H-Net stage takes packed sequences (cu_seqlens), one a row of the cache")

        h = self.encoder(x, cu_seqlens, cache=cache.encoder, max_seqlen=max_seqlen)
        residual = self._residual(h)
        fresh = cache.routing is not None and bool(cache.routing.empty)  # the routing takes the mark, the dechunk too
        routing = self.routing_module(h, cu_seqlens, mask, cache=cache.routing)
        z, next_cu, next_mask, longest = chunk(h, routing.boundary_mask, cu_seqlens)
        inner_routing = []
        if z.shape[1] > 0:  # always but in a prefill that continues rows and starts no chunk
            z, inner_routing = self.main_network(z, next_cu, next_mask, cache=cache.main_network, max_seqlen=longest)
        d = dechunk(z, routing.boundary_mask, routing.boundary_prob, next_cu, self.official_bf16_dechunk,
                    cache=cache.dechunk, cu_seqlens=cu_seqlens, longest=longest, fresh=fresh)
        h = plug_back(d, routing.selected_probs, residual).to(h.dtype)
        h = self.decoder(h, cu_seqlens, cache=cache.decoder, max_seqlen=max_seqlen)
        return _cut(h, d_in), [routing, *inner_routing]

    def step(self, x, cache: HNetCache, mask=None):
        """One position per row: x (B, D_in) -> (h (B, D_in), routing). Rows where mask (B,) is False keep
        their cache, bit for bit; their outputs are meaningless.

        The main network runs on every row, its mask the boundaries: a row that starts no chunk keeps its
        inner state and its EMA, and the stage's output there is its last EMA value. Nothing here decides
        on the host, so that a step can be captured as a CUDA graph (its inner routing is that of every
        row, masked: a row without a boundary has none at the inner stage either).
        """
        d_in = x.shape[-1]
        x = self._pad(x)
        if self.is_innermost:
            return self.main_network.step(x, cache.main_network, mask)[..., :d_in], []

        h = self.encoder.step(x, cache.encoder, mask)
        residual = self._residual(h)
        routing = self.routing_module.step(h, cache.routing, mask)
        boundary = routing.boundary_mask  # already False where mask is
        z, inner_routing = self.main_network.step(h, cache.main_network, boundary)
        d = dechunk_step(z, boundary, routing.boundary_prob, cache.dechunk)
        h = (d + residual).to(h.dtype)  # the STE is exactly 1 in the forward
        h = self.decoder.step(h, cache.decoder, mask)
        return h[..., :d_in], [routing, *inner_routing]

    def _residual(self, h):
        # As the official module computes it, residual_proj(h.to(its weight's dtype)): in fp32 (its weights
        # stay fp32 even in a bf16 model), and under autocast in autocast's dtype, as any nn.Linear there.
        # (Kept in fp32 under autocast, its three 65536 x 1024 x 1024 GEMMs took 8.7 ms of the 1-stage L step
        # on the H200.)
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.residual_proj.weight.dtype)
        return self.residual_proj(h).float()

    def _pad(self, x):
        if self.pad_dimension is None:
            return x
        return torch.cat((x, self.pad_dimension.to(x.dtype).expand(*x.shape[:-1], -1)), dim=-1)

    def init_weights(self, initializer_range: float = 0.02, parent_residuals: int = 0):
        """The official init: normal(0.02) linears; output projections scaled by 1/sqrt(residual count)."""
        stacks = [self.main_network] if self.is_innermost else [self.encoder, self.decoder]
        n_residuals = parent_residuals + sum(s.height for s in stacks)
        for stack in stacks:
            for name, m in stack.named_modules():
                if isinstance(m, nn.Linear):
                    std = initializer_range
                    if name.endswith("out_proj") or name.endswith("fc2"):
                        std = initializer_range / math.sqrt(n_residuals)
                    nn.init.normal_(m.weight, mean=0.0, std=std)
        if not self.is_innermost:
            self.main_network.init_weights(initializer_range, n_residuals)


class HNetForCausalLM(WeightsMixin, nn.Module):
    """Byte embedding -> HNet backbone (its decoder ends in an RMSNorm) -> LM head."""

    def __init__(self, config: HNetConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        d = config.d_model[0]
        self.embeddings = nn.Embedding(config.vocab_size, d, device=device, dtype=dtype)
        self.backbone = HNet(config, 0, device=device, dtype=dtype)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    def init_weights(self, initializer_range: float = 0.02):
        nn.init.normal_(self.embeddings.weight, mean=0.0, std=1.0)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=initializer_range)
        self.backbone.init_weights(initializer_range)

    @property
    def num_stages(self) -> int:
        return self.config.num_stages

    def set_official_bf16_dechunk(self, enabled: bool = True):
        """Reproduce the official default dechunk (bf16 casts in its SSD kernel) instead of our fp32 EMA."""
        for m in self.modules():
            if isinstance(m, HNet):
                m.official_bf16_dechunk = enabled
        return self

    def forward(self, input_ids, cu_seqlens=None, mask=None, cache=None, logits_at=None) -> ModelOutput:
        """input_ids (B, L) with an optional mask (B, L) of real positions (right padding), or packed
        (1, T) with cu_seqlens (num_seqs + 1,) int.

        With a cache from `allocate_inference_cache` (prefill): row b, or packed sequence b, continues row
        b of the cache (see `HNet.forward`), so a prompt may come in pieces; rows take no padding. The
        routing is then that of the packed sequences. logits_at (k,): the positions (of every row, or of
        the packed row) whose logits are wanted, e.g. each sequence's last: logits (B or 1, k, vocab).
        """
        if cache is not None and cu_seqlens is None:
            if mask is not None and not mask.all():
                raise ValueError("prefill takes unpadded rows: no mask with False entries")
            B, L = input_ids.shape
            packed, cu = as_packed(input_ids)
            at = None if logits_at is None else (torch.arange(B, device=cu.device)[:, None] * L + logits_at).flatten()
            out = self.forward(packed, cu, cache=cache, logits_at=at)
            out.logits = out.logits.view(B, -1, out.logits.shape[-1])
            return out
        if cu_seqlens is not None:
            if input_ids.shape[0] != 1:
                raise ValueError(f"packed input must have shape (1, T), got {tuple(input_ids.shape)}")
            mask = None
        elif mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        h, routing = self.backbone(self.embeddings(input_ids), cu_seqlens=cu_seqlens, mask=mask, cache=cache)
        if logits_at is not None:
            h = h[:, logits_at]
        return ModelOutput(self.lm_head(h), routing)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None) -> HNetCache:
        """Caches for decoding `batch_size` rows of up to `max_seqlen` positions (prompt + new bytes; a
        prefill makes more room as it needs, steps do not: `hnet.generation.cache.reserve`). dtype: of the
        cached activations (default: the weights'); SSM states and the EMA stay fp32."""
        with zeroed_together():  # a few ops for the whole tree, not one per tensor
            return self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype)

    def step(self, input_ids, cache: HNetCache, mask=None) -> ModelOutput:
        """One byte per row: input_ids (B,) -> logits (B, vocab) for the next byte. Rows where mask (B,) is
        False do not advance (their caches stay as they are, bit for bit). No host sync: a CUDA graph can
        hold it. The routing holds this step's decisions per stage; at an inner stage, rows that start no
        chunk at the outer one have no boundary."""
        h, routing = self.backbone.step(self.embeddings(input_ids), cache, mask)
        return ModelOutput(self.lm_head(h), routing)

    def generate(self, prompts, max_new_bytes, temperature=1.0, top_k=None, top_p=None, stop=None, seed=None,
                 **decoder):
        """New bytes after each prompt (a list of bytes); see `hnet.generation.generate` (decoder: the options
        of its Decoder: cuda_graphs, read_every, prefill_bytes, buckets)."""
        from hnet.generation import generate  # generation consumes models: imported on use, not at load

        return generate(self, prompts, max_new_bytes, temperature, top_k, top_p, stop, seed, **decoder)

    def stage_of(self, param_name: str) -> int:
        """The stage a parameter belongs to: each `main_network.` step goes one stage in."""
        return min(param_name.count("main_network."), self.num_stages - 1)
