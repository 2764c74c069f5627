"""Cached decoding vs re-running the full forward for every new byte: bytes/s and per-byte latency.

    python benchmarks/generate.py                       # hnet_1stage_L shape, random bf16 weights, CUDA
    python benchmarks/generate.py --device cpu --quick  # tiny shapes: checks that it runs

Run from the repository root (the default config path is relative to it; the official configs go in the
ignored .ref/ folder: mkdir -p .ref && cp -r ../shared/reference/configs .ref/). For each context length and
batch size: every row holds `context` bytes of text (the bundled Shakespeare sample), is prefilled, then
fed the following bytes of the text one step at a time (teacher forcing, so that the boundary rate is
the model's on text rather than on its own output). The baseline runs the whole forward over the
context plus the bytes so far, for a few bytes only (it is slow). Timing: warmup first, then
torch.cuda.synchronize around a wall clock (a decoding step syncs with the host anyway, once per stage).
Per-byte latency of the cached decode should stay flat from 1k to 8k of context; the baseline's grows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hnet import HNetConfig, HNetForCausalLM
from hnet.eval.flops import device_info
from hnet.eval.timing import TEXT, sync
from hnet.generation.cache import select_rows

DEFAULT_CONFIG = ".ref/configs/hnet_1stage_L.json"

QUICK_CONFIG = {
    "arch_layout": ["m2", ["T2"], "m2"], "d_model": [64, 128], "d_intermediate": [0, 256],
    "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2},
    "attn_cfg": {"num_heads": [2, 4], "rotary_emb_dim": [16, 16], "window_size": [31, -1]},
}


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def text_rows(batch: int, length: int, device) -> torch.Tensor:
    """(batch, length) bytes: BOS then text, each row from a different place in the sample."""
    data = torch.frombuffer(bytearray(TEXT.read_bytes()), dtype=torch.uint8)
    starts = torch.linspace(0, len(data) - length - 1, batch).long()
    rows = torch.stack([data[s:s + length - 1] for s in starts.tolist()]).long()
    return torch.cat([torch.full((batch, 1), 254), rows], dim=1).to(device)


@torch.inference_mode()
def cached_decode(model, ids, context: int, warmup: int, steps: int, device):
    """Seconds per step of the cached decode after a `context`-byte prefill; prefill seconds; chunks per byte
    at each inner stage during the timed steps."""
    batch = ids.shape[0]
    cache = model.allocate_inference_cache(batch, ids.shape[1])
    prefill = timed(lambda: [model(ids[i:i + 1, :context], cache=select_rows(cache, slice(i, i + 1)))
                             for i in range(batch)], device)
    for t in range(context, context + warmup):
        model.step(ids[:, t], cache)
    boundaries = []

    def run():
        for t in range(context + warmup, context + warmup + steps):
            boundaries.append([r.boundary_mask.sum() for r in model.step(ids[:, t], cache).routing])

    seconds = timed(run, device)
    stages = max(map(len, boundaries), default=0)
    chunks = [sum(float(b[s]) for b in boundaries if len(b) > s) / (batch * steps) for s in range(stages)]
    return seconds / steps, prefill, chunks


@torch.inference_mode()
def full_forward(model, ids, context: int, warmup: int, steps: int, device) -> float:
    """Seconds per new byte when every byte re-runs the forward over everything before it."""
    for t in range(context, context + warmup):
        model(ids[:, :t]).logits[:, -1]
    lengths = range(context + warmup, context + warmup + steps)
    return timed(lambda: [model(ids[:, :t]).logits[:, -1] for t in lengths], device) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="an official model JSON")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--steps", type=int, default=128, help="cached decoding steps timed")
    parser.add_argument("--full-steps", type=int, default=3, help="full-forward bytes timed")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model and contexts (64, 256), batch 1 and 4")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.quick:
        config, name = HNetConfig.from_dict(QUICK_CONFIG), "quick (tiny)"
        args.contexts, args.batch_sizes, args.steps, args.full_steps = [64, 256], [1, 4], 16, 2
    elif not Path(args.config).exists():
        sys.exit(f"{args.config}: not found (the official configs: mkdir -p .ref && cp -r ../shared/reference/configs .ref/)")
    else:
        config, name = HNetConfig.from_json(args.config), args.config
    torch.manual_seed(0)
    model = HNetForCausalLM(config, device=device, dtype=dtype).eval()

    gpu, _ = device_info(device)
    print(f"device: {gpu}, torch {torch.__version__}, {dtype}")
    print(f"model: {name}: arch_layout {config.arch_layout}, d_model {config.d_model}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights")
    print(f"cached: {args.steps} steps timed after {args.warmup} warmup; full forward: {args.full_steps} bytes timed")
    print()
    print(f"{'context':>7} {'batch':>5} | {'cached ms/byte':>14} {'bytes/s':>9} | {'full ms/byte':>12} {'bytes/s':>9} "
          f"| {'speedup':>7} | {'prefill s':>9} | chunks/byte per stage")
    latency = {}  # (batch, context) -> (cached, full) seconds per step
    for context in args.contexts:
        for batch in args.batch_sizes:
            ids = text_rows(batch, context + args.warmup + max(args.steps, args.full_steps), device)
            step_s, prefill_s, chunks = cached_decode(model, ids, context, args.warmup, args.steps, device)
            full_s = full_forward(model, ids, context, 1, args.full_steps, device)
            latency[batch, context] = step_s, full_s
            print(f"{context:>7} {batch:>5} | {step_s * 1e3:>14.2f} {batch / step_s:>9.0f} | {full_s * 1e3:>12.1f} "
                  f"{batch / full_s:>9.1f} | {full_s / step_s:>6.1f}x | {prefill_s:>9.2f} | "
                  + " ".join(f"{c:.3f}" for c in chunks))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    first, last = args.contexts[0], args.contexts[-1]
    print(f"\nper-byte latency at context {last} / at {first} (flat = 1.0):")
    for batch in args.batch_sizes:
        (c0, f0), (c1, f1) = latency[batch, first], latency[batch, last]
        print(f"  batch {batch:>3}: cached {c1 / c0:.2f}, full forward {f1 / f0:.2f}")


if __name__ == "__main__":
    main()
