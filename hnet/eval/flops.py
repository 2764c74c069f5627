"""Forward FLOPs per byte, counted analytically per layer type.

Chinchilla-style: 2 FLOPs per multiply-add of every matrix product, nothing else (norms, activations,
gates, softmax, the embedding lookup and the SSM's elementwise decay are left out). Per token of a
stage that runs L tokens per sequence, with d its width:

  attention   8 d^2 (q, k, v, out projections) + 4 c d (scores and weighted values), c = L, or
              min(L, window + 1) with a sliding window: the keys a query sees when every query
              is counted over the whole context, as Chinchilla and FlopCounterMode count
  SwiGLU MLP  6 d H, H = d_intermediate rounded up to a multiple of 128 (as `SwiGLU` does)
  Mamba-2     2 d (2 e + 2 n + h) in_proj + 2 k (e + 2 n) conv + 2 e d out_proj
              + the chunked SSD scan 2 (h q n + q e + 2 e n): C B^T and its product with x inside each
              chunk of q = min(chunk_size, L) steps, the chunk states and their readout
              (e = expand d inner width, n = d_state, h = e / 64 heads, k = d_conv)
  head        2 d V at stage 0 (V the vocabulary); the embedding is a lookup: 0
  routing     per byte of the stage that chunks: 4 d^2 (q and k projections) + 2 d^2 (the residual
              projection), and the dechunk EMA, computed as a one-head SSD scan over the chunks:
              2 (64 + 64 d + 2 d) per chunk (state size 1, head size d, chunks of 64)

Per byte, a stage's per-token FLOPs are divided by the bytes each of its tokens stands for: 1 at stage 0
of a byte model, bytes per token for a BPE model, and the cumulative bytes per chunk for the inner
stages of an H-Net (their sequence length is seq_len / bytes per chunk too). Training costs about 3x
the forward (the backward is twice the forward).

Model FLOPs utilisation (`mfu`): the training FLOPs per second these counts imply, as a fraction of a
dense bf16 peak (the datasheet's, `PEAK_TFLOPS`, or one measured).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hnet.config import MAMBA_HEADDIM, HNetConfig
from hnet.layers.isotropic import parse_layer_string

SWIGLU_MULTIPLE = 128  # SwiGLU's default `multiple_of`
EMA_CHUNK = 64  # ema_scan's chunk size
COMPONENTS = ("attention", "mamba2", "mlp", "head", "routing")
TRAIN_FLOPS_PER_FORWARD = 3  # forward + a backward of twice its cost
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 of the SXM cards, by a part of the device name


def attention_flops(d: int, context: int) -> float:
    return 8 * d * d + 4 * context * d


def mlp_flops(d: int, d_intermediate: int) -> float:
    hidden = -(-d_intermediate // SWIGLU_MULTIPLE) * SWIGLU_MULTIPLE
    return 6 * d * hidden


def mamba2_flops(d: int, length: int, d_state: int, d_conv: int, expand: int, chunk_size: int) -> float:
    e, n = expand * d, d_state
    h, q = e // MAMBA_HEADDIM, min(chunk_size, length)
    projections = 2 * d * (2 * e + 2 * n + h) + 2 * e * d
    return projections + 2 * d_conv * (e + 2 * n) + 2 * (h * q * n + q * e + 2 * e * n)


def dechunk_flops(d: int, chunks: float) -> float:
    q = min(EMA_CHUNK, chunks)
    return 2 * (q + q * d + 2 * d)


def stage_lengths(config: HNetConfig, seq_len: int, bytes_per_chunk: Sequence[float] = ()) -> list[float]:
    """Tokens per sequence at each stage: seq_len, then seq_len / (cumulative bytes per chunk)."""
    if len(bytes_per_chunk) != config.num_stages - 1:
        raise ValueError(f"bytes_per_chunk {list(bytes_per_chunk)!r}: the model has {config.num_stages - 1} chunking "
                         "stage(s) and needs one value (bytes per chunk) for each")
    return [float(seq_len)] + [seq_len / n for n in bytes_per_chunk]


def flops_breakdown(config: HNetConfig, seq_len: int, bytes_per_chunk: Sequence[float] = (),
                    bytes_per_token: float = 1.0) -> dict[str, float]:
    """Forward FLOPs per byte by component (COMPONENTS). seq_len: tokens per sequence at stage 0 (bytes,
    or BPE ids); bytes_per_chunk: cumulative per chunking stage, outermost first (as metrics.jsonl logs)."""
    lengths = stage_lengths(config, seq_len, bytes_per_chunk)
    bytes_per = [bytes_per_token] + [bytes_per_token * n for n in bytes_per_chunk]
    out = dict.fromkeys(COMPONENTS, 0.0)
    attn, ssm = config.attn_cfg, config.ssm_cfg
    for s, (length, per) in enumerate(zip(lengths, bytes_per)):
        d, layout = config.d_model[s], config.stage_layout(s)
        for spec in (layout[0],) if len(layout) == 1 else (layout[0], layout[2]):
            for kind, with_mlp in parse_layer_string(spec):
                if kind == "attn":
                    window = attn.window_size[s]
                    context = length if window < 0 else min(length, window + 1)
                    out["attention"] += attention_flops(d, context) / per
                else:
                    out["mamba2"] += mamba2_flops(d, length, ssm.d_state, ssm.d_conv, ssm.expand, ssm.chunk_size) / per
                if with_mlp:
                    out["mlp"] += mlp_flops(d, config.d_intermediate[s]) / per
        if len(layout) == 3:
            out["routing"] += 6 * d * d / per + dechunk_flops(d, lengths[s + 1]) / bytes_per[s + 1]
    out["head"] = 2 * config.d_model[0] * config.vocab_size / bytes_per_token
    return out


def flops_per_byte(config: HNetConfig, seq_len: int, bytes_per_chunk: Sequence[float] = (),
                   bytes_per_token: float = 1.0) -> float:
    """Forward FLOPs per byte of input (see the module docstring for what is counted)."""
    return sum(flops_breakdown(config, seq_len, bytes_per_chunk, bytes_per_token).values())


def mfu(forward_flops_per_byte: float, bytes_per_s: float, peak_tflops: float) -> float:
    """The fraction of `peak_tflops` that training at `bytes_per_s` uses (training = 3x the forward)."""
    return TRAIN_FLOPS_PER_FORWARD * forward_flops_per_byte * bytes_per_s / (peak_tflops * 1e12)


def peak_tflops(device_name: str) -> float:
    """The dense bf16 peak of a device by its name (e.g. "NVIDIA H100 80GB HBM3"), nan if not known."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), float("nan"))


def device_info(device) -> tuple[str, float]:
    """(the device's name, its dense bf16 peak in TFLOP/s or nan); "cpu" off CUDA."""
    if device.type != "cuda":
        return "cpu", float("nan")
    name = torch.cuda.get_device_name(device)
    return name, peak_tflops(name)
