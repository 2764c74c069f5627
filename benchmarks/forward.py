"""Forward bytes/s of the official H-Net configs (random weights, bf16): Triton fast path vs the PyTorch
reference path (HNET_REFERENCE=1, read by `hnet.ops.dispatch` at every call).

    python benchmarks/forward.py                                         # .ref/configs L and XL, batch 8 x 8192
    python benchmarks/forward.py --config .ref/configs/hnet_2stage_XL.json --batch 4
    TRITON_INTERPRET=1 python benchmarks/forward.py --device cpu --quick      # tiny presets: checks the code path

The official configs go in the ignored .ref/ folder first: mkdir -p .ref && cp -r ../shared/reference/configs .ref/

Weights and activations in bf16 (fp32 on CPU), under torch.inference_mode, on packed batches of the
bundled text (documents of 2048 bytes). If a batch does not fit, it is halved until it does and the row
says the batch used. Rows are printed as a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hnet import HNetForCausalLM
from hnet.eval.flops import device_info
from hnet.eval.timing import (environment, fitting, load_model_config, parse_shape_args, shape_parser, sync,
                              text_batch)
from hnet.ops.dispatch import kernel_path
from hnet.training.metrics import bytes_per_chunk, chunk_counts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [f".ref/configs/hnet_{s}.json" for s in ("1stage_L", "2stage_L", "1stage_XL", "2stage_XL")]


def forward_once(model, device, batch: int, seq_len: int, steps: int, warmup: int) -> dict:
    data = text_batch(batch, seq_len, device)
    ids, cu = data["input_ids"].reshape(1, -1), data["cu_seqlens"]
    with torch.inference_mode():
        for _ in range(warmup):
            model(ids, cu_seqlens=cu)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(ids, cu_seqlens=cu)
        sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {
        "ms": seconds * 1e3,
        "bytes_per_s": ids.numel() / seconds,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "bytes_per_chunk": bytes_per_chunk(chunk_counts({"input_ids": ids}, out.routing)),
    }


def main(argv=None):
    parser = shape_parser(__doc__, DEFAULT_CONFIGS)
    args = parse_shape_args(parser, argv, REPO)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name, _ = device_info(device)
    print(environment(name))
    print(f"forward: {dtype}, inference_mode, {args.warmup} warmup + {args.steps} timed, "
          f"requested batch {args.batch} x {args.seq_len} bytes")

    rows, times = [], {}
    for path in args.config:
        config = load_model_config(str(REPO / path))  # an absolute path stays itself
        torch.manual_seed(0)
        model = HNetForCausalLM(config, device=device, dtype=dtype).eval()
        params = sum(p.numel() for p in model.parameters())
        for kpath in ("fast", "reference"):
            with kernel_path(kpath):
                batch, r = fitting(lambda b: forward_once(model, device, b, args.seq_len, args.steps, args.warmup),
                                   args.batch)
            label = f"{Path(path).stem} {kpath}"
            if r is None:
                rows.append((label, f"{params / 1e6:.1f}M", f"OOM at 1 x {args.seq_len}", "-", "-", "-", "-", "-"))
                continue
            times[path, kpath] = r["bytes_per_s"]
            speedup = f"{times[path, 'fast'] / r['bytes_per_s']:.2f}x" if kpath == "reference" and (path, "fast") in times else "-"
            rows.append((label, f"{params / 1e6:.1f}M", f"{batch} x {args.seq_len}", f"{r['ms']:.1f}",
                         f"{r['bytes_per_s']:,.0f}", speedup, f"{r['peak_gib']:.1f}",
                         ", ".join(f"{x:.2f}" for x in r["bytes_per_chunk"]) or "-"))
            print(" | ".join(rows[-1]), flush=True)
        model = None  # free its memory before the next config
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print("| model / path | params | batch | ms | bytes/s | fast speedup | peak GiB | bytes/chunk (cumulative) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
