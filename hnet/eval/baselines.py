"""Isotropic baselines from the H-Net's own layers, sized to match an H-Net's forward FLOPs per byte.

  transformer  "T{n}": attention + SwiGLU MLP in every layer
  mamba2       "m{n}": Mamba-2 layers without MLPs, as the Mamba-2 language models are built
  hybrid       "m3t1" repeated: three Mamba-2 layers, then one attention layer, no MLPs

Over BPE ids the same stacks are the BPE baselines (vocab_size = the tokenizer's, FLOPs per byte =
FLOPs per token / bytes per token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hnet.config import MAMBA_HEADDIM, AttnConfig, HNetConfig, SSMConfig
from hnet.eval.flops import flops_per_byte
from hnet.layers.isotropic import parse_layer_string

KINDS = ("transformer", "mamba2", "hybrid")


def baseline_layout(kind: str, n_layers: int) -> str:
    if kind == "transformer":
        return f"T{n_layers}"
    if kind == "mamba2":
        return f"m{n_layers}"
    if kind == "hybrid":
        if n_layers % 4:
            raise ValueError(f"a hybrid stack is built of 'm3t1' groups: {n_layers} layers is not a multiple of 4")
        return "m3t1" * (n_layers // 4)
    raise ValueError(f"unknown baseline kind {kind!r}; expected one of {', '.join(KINDS)}")


def main_head_dim(like: HNetConfig) -> int:
    """The attention head size of the H-Net's main network (innermost stage); heads of about 64 where it
    sets none."""
    inner = like.num_stages - 1
    d_main = like.d_model[inner]
    heads = like.attn_cfg.num_heads[inner] if like.attn_cfg.num_heads else max(d_main // 64, 1)
    return d_main // heads


def baseline_config(kind: str, d_model: int, n_layers: int, like: HNetConfig, vocab_size: int = 256) -> HNetConfig:
    """An isotropic `kind` stack of the given width and depth, taking the rest from the H-Net `like`: the
    SSM settings, and from its main network (innermost stage) the attention head size, the rotary
    dimension and the MLP width ratio."""
    inner = like.num_stages - 1
    d_main = like.d_model[inner]
    head_dim = main_head_dim(like)
    ratio = like.d_intermediate[inner] / d_main if like.d_intermediate[inner] else 8 / 3
    uses_attention = kind != "mamba2"
    attn = AttnConfig(
        num_heads=[d_model // head_dim], window_size=[-1],
        rotary_emb_dim=[min(like.attn_cfg.rotary_emb_dim[inner] if like.attn_cfg.rotary_emb_dim else 0, head_dim)],
    ) if uses_attention else AttnConfig()
    config = HNetConfig(
        arch_layout=[baseline_layout(kind, n_layers)], d_model=[d_model],
        d_intermediate=[round(ratio * d_model) if kind == "transformer" else 0], vocab_size=vocab_size,
        ssm_cfg=SSMConfig(**vars(like.ssm_cfg)), attn_cfg=attn, tie_embeddings=False,
    )
    config.validate(f"{kind} baseline")
    return config


def width_step(kind: str, like: HNetConfig) -> int:
    """Widths a stack of `kind` can take are multiples of this: whole attention heads of the main
    network's size, and expand * width a multiple of the Mamba-2 head size."""
    steps = [MAMBA_HEADDIM // math.gcd(like.ssm_cfg.expand, MAMBA_HEADDIM)] if kind != "transformer" else []
    if kind != "mamba2":
        steps.append(main_head_dim(like))
    return math.lcm(*steps)


def size_baseline(kind: str, target_flops_per_byte: float, seq_len: int, like: HNetConfig, vocab_size: int = 256,
                  bytes_per_token: float = 1.0, depths: Sequence[int] = range(1, 65)) -> HNetConfig:
    """The `kind` baseline whose forward FLOPs per byte (at seq_len tokens per sequence and
    bytes_per_token) is nearest `target_flops_per_byte`, among those whose shape (width per layer) is
    within a factor of 2 of the H-Net main network's: the budget scales the main network's shape rather
    than giving a stack of 20 layers of width 32. Without such a shape, the nearest of any shape.
    """
    step = width_step(kind, like)
    inner = like.num_stages - 1
    d_main = like.d_model[inner]
    aspect = d_main / len(parse_layer_string(like.stage_layout(inner)[0]))
    candidates = []
    for n in depths:
        if kind == "hybrid" and n % 4:
            continue
        for d in range(step, 4 * d_main + 1, step):
            config = baseline_config(kind, d, n, like, vocab_size)
            error = abs(flops_per_byte(config, seq_len, (), bytes_per_token) / target_flops_per_byte - 1)
            candidates.append((abs(math.log2(d / n / aspect)) > 1, error, n, d))
    if not candidates:
        raise ValueError(f"no {kind} baseline can be built with depths {list(depths)}")
    *_, n, d = min(candidates)
    return baseline_config(kind, d, n, like, vocab_size)
