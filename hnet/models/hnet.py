"""The H-Net: one recursive stage (`HNet`) and the byte-level language model around it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from hnet.chunking.chunk import chunk, dechunk, ste
from hnet.chunking.routing import RoutingModule, RoutingOutput
from hnet.config import HNetConfig
from hnet.layers.isotropic import Isotropic
from hnet.layers.mlp import SwiGLU
from hnet.models.weights import WeightsMixin


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, L, vocab) or (1, T, vocab) packed
    routing: list[RoutingOutput] = field(default_factory=list)  # one per routing stage, outermost first


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
            self.main_network = Isotropic(config, stage, layout[0], **kw)
        else:
            self.encoder = Isotropic(config, stage, layout[0], **kw)
            self.main_network = HNet(config, stage + 1, **kw)
            self.decoder = Isotropic(config, stage, layout[2], **kw)
            self.routing_module = RoutingModule(d, **kw)
            # The residual around the main network is computed in fp32 (weights too); zero weight at init.
            self.residual_proj = nn.Linear(d, d, device=device, dtype=torch.float32)
            nn.init.zeros_(self.residual_proj.weight)
        pad = d - config.d_model[stage - 1] if stage > 0 else 0
        self.pad_dimension = nn.Parameter(torch.zeros(pad, **kw)) if pad > 0 else None
        self.official_bf16_dechunk = False

    def forward(self, x, cu_seqlens=None, mask=None):
        """x (B, L, D_in) with mask (B, L), or packed (1, T, D_in) with cu_seqlens. Returns (h, routing)."""
        d_in = x.shape[-1]
        if self.pad_dimension is not None:
            x = torch.cat((x, self.pad_dimension.to(x.dtype).expand(*x.shape[:-1], -1)), dim=-1)
        if self.is_innermost:
            return self.main_network(x, cu_seqlens)[..., :d_in], []

        h = self.encoder(x, cu_seqlens)
        with torch.autocast(h.device.type, enabled=False):
            residual = self.residual_proj(h.float())
        routing = self.routing_module(h, cu_seqlens, mask)
        z, next_cu, next_mask = chunk(h, routing.boundary_mask, cu_seqlens, mask)
        z, inner_routing = self.main_network(z, next_cu, next_mask)
        d = dechunk(z, routing.boundary_mask, routing.boundary_prob, next_cu, self.official_bf16_dechunk)
        h = (d * ste(routing.selected_probs) + residual).to(h.dtype)
        h = self.decoder(h, cu_seqlens)
        return h[..., :d_in], [routing, *inner_routing]

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

    def forward(self, input_ids, cu_seqlens=None, mask=None) -> ModelOutput:
        """input_ids (B, L) with an optional mask (B, L) of real positions (right padding), or packed
        (1, T) with cu_seqlens (num_seqs + 1,) int."""
        if cu_seqlens is not None:
            if input_ids.shape[0] != 1:
                raise ValueError(f"packed input must have shape (1, T), got {tuple(input_ids.shape)}")
            mask = None
        elif mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        h, routing = self.backbone(self.embeddings(input_ids), cu_seqlens=cu_seqlens, mask=mask)
        return ModelOutput(self.lm_head(h), routing)

    def stage_of(self, param_name: str) -> int:
        """The stage a parameter belongs to: each `main_network.` step goes one stage in."""
        return min(param_name.count("main_network."), self.num_stages - 1)
