"""The floor of a training step: the least time it can take on a device, as benchmarks/RESULTS.md derived it
for the 1-stage L step (session 10, "The floor of the step").

    matmuls     the projections (Mamba-2's in and out, attention's qkv and out, SwiGLU's, the routers' q, k and
                residual projections, the LM head), 3x the forward's multiply-adds, at the measured bf16 matmul rate
    attention   causal scores and weighted values over each packed sequence (window-limited where one is set),
                3x the forward (two products forward, four backward), at the same rate
    traffic     the least bytes of the memory-bound work that remains, at the measured copy rate:
                - fused AdamW (28 B a parameter) and gradient clipping (12 B);
                - autocast's weight casts and their gradients' casts (12 B a parameter);
                - every pre-norm residual add + RMSNorm, forward and backward (28 B an element: h in 16
                  bits, the float32 residual stream, the normed output and their gradients);
                - every Mamba-2 mixer, each tensor read or written once (16-bit activations): forward
                  conv (xBC in and out), scan (x, B, C, dt in, y out) and gated norm (y, z in, out out),
                  backward the same in reverse with their gradients: 16 c + 20 e + 4 h bytes a position
                  (e = d_inner, c = e + 2 d_state, h heads).

Left out, so the floor stays a lower bound: the SSD's own FLOPs and chunk states, SwiGLU's and the rotary
embedding's passes, the embedding and loss, routing, chunk and dechunk, fills, copies, idle time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hnet.config import MAMBA_HEADDIM, HNetConfig
from hnet.eval.flops import TRAIN_FLOPS_PER_FORWARD, mlp_flops, stage_lengths
from hnet.layers.isotropic import parse_layer_string

ACTIVATION_BYTES = 2  # bf16 activations under autocast
OPTIMIZER_BYTES_PER_PARAM = 28 + 12  # fused AdamW: read p, g, m, v and write p, m, v; clipping: read g twice, write it once
CAST_BYTES_PER_PARAM = 12  # fp32 weight read, bf16 copy written; bf16 gradient read, fp32 written
ADD_NORM_BYTES_PER_ELEMENT = 28  # forward 2 + 4 in, 4 + 2 out; backward 2 + 4 + 4 in, 2 + 4 out


def mamba2_mixer_bytes(d_inner: int, d_state: int, nheads: int) -> int:
    """Least bytes a position of one Mamba-2 mixer moves, forward and backward (module docstring)."""
    conv_dim = d_inner + 2 * d_state
    return ACTIVATION_BYTES * (8 * conv_dim + 10 * d_inner + 2 * nheads)


@dataclass
class StepFloor:
    matmul_tflop: float  # per step, forward and backward
    attention_tflop: float
    traffic_gb: dict[str, float] = field(default_factory=dict)  # least bytes by part, GB (1e9)

    def parts_ms(self, matmul_tflops: float, copy_gbps: float) -> dict[str, float]:
        """Milliseconds of each part at the given rates (TFLOP/s, GB/s)."""
        out = {"matmuls": self.matmul_tflop / matmul_tflops * 1e3, "attention": self.attention_tflop / matmul_tflops * 1e3}
        out.update({name: gb / copy_gbps * 1e3 for name, gb in self.traffic_gb.items()})
        return out

    def ms(self, matmul_tflops: float, copy_gbps: float) -> float:
        return sum(self.parts_ms(matmul_tflops, copy_gbps).values())


def step_floor(config: HNetConfig, batch: int, seq_len: int, n_params: int, bytes_per_chunk: Sequence[float] = (),
               sequence_len: int | None = None) -> StepFloor:
    """The floor's work for `batch` rows of `seq_len` bytes, packed in sequences of `sequence_len` bytes
    (default: one a row), at the cumulative bytes per chunk of each chunking stage; n_params: the model's."""
    lengths = stage_lengths(config, seq_len, bytes_per_chunk)
    contexts = stage_lengths(config, sequence_len or seq_len, bytes_per_chunk)
    attn, ssm = config.attn_cfg, config.ssm_cfg
    matmul = attention = norm_elements = mixer_bytes = 0.0
    for s, (length, context) in enumerate(zip(lengths, contexts)):
        d, layout, tokens = config.d_model[s], config.stage_layout(s), batch * length
        for spec in (layout[0],) if len(layout) == 1 else (layout[0], layout[2]):
            layers = parse_layer_string(spec)
            norm_elements += (len(layers) + sum(mlp for _, mlp in layers) + 1) * tokens * d
            for kind, with_mlp in layers:
                if kind == "attn":
                    window = attn.window_size[s]
                    seen = (context + 1) / 2 if window < 0 else min((context + 1) / 2, window + 1)
                    matmul += 8 * d * d * tokens
                    attention += 4 * d * seen * tokens
                else:
                    e, n = ssm.expand * d, ssm.d_state
                    h = e // MAMBA_HEADDIM
                    matmul += (2 * d * (2 * e + 2 * n + h) + 2 * e * d) * tokens
                    mixer_bytes += mamba2_mixer_bytes(e, n, h) * tokens
                if with_mlp:
                    matmul += mlp_flops(d, config.d_intermediate[s]) * tokens
        if len(layout) == 3:
            matmul += 6 * d * d * tokens  # the router's q and k, the residual projection
    matmul += 2 * config.d_model[0] * config.vocab_size * batch * seq_len  # the LM head
    traffic = {
        "optimizer": OPTIMIZER_BYTES_PER_PARAM * n_params / 1e9,
        "casts": CAST_BYTES_PER_PARAM * n_params / 1e9,
        "add_norms": ADD_NORM_BYTES_PER_ELEMENT * norm_elements / 1e9,
        "mamba2": mixer_bytes / 1e9,
    }
    return StepFloor(TRAIN_FLOPS_PER_FORWARD * matmul / 1e12, TRAIN_FLOPS_PER_FORWARD * attention / 1e12, traffic)
