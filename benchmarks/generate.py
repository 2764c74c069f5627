"""Decoding speed of the official H-Nets: ms per byte of the CUDA-graph decode and of the eager one, and a
prefill against one forward of the fast path.

    python benchmarks/generate.py                       # hnet_1stage_L and hnet_2stage_L, CUDA, bf16
    python benchmarks/generate.py --config .ref/configs/hnet_2stage_L.json --batch-sizes 1 16 --steps 256
    python benchmarks/generate.py --device cpu --quick  # a tiny model, contexts 64 and 256: checks the code path

Run from the repository root: the official configs go in the ignored .ref/ folder (mkdir -p .ref && cp -r
../shared/reference/configs .ref/). Random weights in bf16 (fp32 on CPU).

For each config, context and batch size, both paths (`graph`: `hnet.generation.graphs`, the default on
CUDA; `eager`: the reference, run step by step on the host) do the same: every row holds `context` bytes
of the bundled text (BOS first, each row from another place), packed-prefilled into its cache, then is
teacher-forced through the following bytes (the text, not the model's samples, so that the router sees
text), `--warmup` steps, then `--steps` timed. A step is all a sampled byte costs: the model's step
(every stage, inner stages masked), the choice of the next byte (temperature 1 sampling, its result
replaced by the text's byte) and the stop check. Each step is timed alone: CUDA events around it on
CUDA (no host sync between steps, as in generation), a wall clock on CPU. Columns:

  ms/byte median, p90  the step's time: every row gets one byte a step
  bytes/s              batch / median step
  GPU ms/step          kernel time per step by torch.profiler (over --profile-steps steps): against the
                       median, how much of a step the GPU is busy (graph) or waits on the host (eager)
  boundaries           fraction of the timed bytes that start a chunk at stage 1, 2 (of a forward over
                       the same text: the step's decisions are the forward's)

Then, per config: a prefill of `--prefill-bytes` bytes (one row, `hnet.generation.prefill`) against one
forward of the same bytes without a cache, both on the fast path.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

from hnet import HNetConfig, HNetForCausalLM
from hnet.constants import BOS
from hnet.eval.flops import device_info
from hnet.eval.timing import TEXT, bench_alternating, environment, sync
from hnet.generation import Decoder, prefill

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [f".ref/configs/hnet_{s}.json" for s in ("1stage_L", "2stage_L")]

QUICK_CONFIG = {
    "arch_layout": ["m2", ["T1", ["T1"], "m1"], "m2"], "d_model": [64, 96, 128], "d_intermediate": [0, 192, 256],
    "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2},
    "attn_cfg": {"num_heads": [2, 2, 4], "rotary_emb_dim": [16, 16, 16], "window_size": [31, 15, -1]},
}


def text_rows(batch: int, length: int) -> torch.Tensor:
    """(batch, length) bytes: BOS then text, each row from a different place in the sample."""
    data = torch.frombuffer(bytearray(TEXT.read_bytes()), dtype=torch.uint8)
    starts = torch.linspace(0, len(data) - length - 1, batch).long()
    rows = torch.stack([data[s:s + length - 1] for s in starts.tolist()]).long()
    return torch.cat([torch.full((batch, 1), BOS), rows], dim=1)


def step_times(step, n: int, device) -> list[float]:
    """Milliseconds of each of n calls of step(): CUDA events between them (no host sync), or a wall clock."""
    if device.type != "cuda":
        times = []
        for _ in range(n):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for e in events[1:]:
        step()
        e.record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) for a, b in zip(events, events[1:])]


def profiled_ms(step, n: int, device) -> float:
    """Kernel time per call of step() by torch.profiler (CPU time off CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync(device)
    if device.type == "cuda":
        return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / n
    return sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / n


@torch.no_grad()
def boundary_fractions(model, ids, start: int) -> list[float]:
    """Per chunking stage, the fraction of the bytes ids[:, start:] that begin a chunk there (a forward
    over at most 4 rows; a byte begins a stage-s chunk if it begins one at every stage before)."""
    routing = model(ids[:4]).routing
    begins = torch.ones_like(ids[:4], dtype=torch.bool)
    fractions = []
    for r in routing:
        # stage-s position of each byte's chunk: the count of stage-(s-1) chunks begun so far, minus one
        position = torch.cumsum(begins.long(), dim=1) - 1
        begins = begins & torch.gather(r.boundary_mask, 1, position.clamp(min=0))
        fractions.append(begins[:, start:].float().mean().item())
    return fractions


def decode_row(model, ids, context: int, steps: int, warmup: int, profile_steps: int, graphs: bool, device) -> dict:
    decoder = Decoder(model, cuda_graphs=graphs)
    decoder.start([bytes(row[1:context].tolist()) for row in ids])  # start() puts BOS first
    step = decoder.prepare(warmup + steps + profile_steps + 1, forced=ids[:, context:])
    for _ in range(warmup):
        step()
    times = step_times(step, steps, device)
    gpu_ms = profiled_ms(step, profile_steps, device) if profile_steps else float("nan")
    assert decoder.state.out[: ids.shape[0], :steps].equal(ids[:, context:context + steps].to(device))  # forced
    median = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
    return {"median": median, "p90": p90, "bytes_per_s": ids.shape[0] / median * 1e3, "gpu_ms": gpu_ms}


@torch.no_grad()
def prefill_vs_forward(model, n_bytes: int, device, top: int = 0) -> tuple[float, float]:
    """Milliseconds (medians of 15 calls each, taking turns) of a prefill of n_bytes bytes into a fresh
    cache, and of one forward;
    top > 0: also print the `top` ops of each by time (kernel time on CUDA), to see where they differ."""
    ids = text_rows(1, n_bytes).to(device)
    prompt = bytes(ids[0].tolist())  # the user's bytes, on the host

    def fill():
        prefill(model, model.allocate_inference_cache(1, 0), [prompt])

    def forward():
        model(ids)

    medians = bench_alternating({"prefill": fill, "forward": forward}, device)
    times = medians["prefill"], medians["forward"]
    for name, fn in (("prefill", fill), ("forward", forward)) if top else ():
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
            fn()
            sync(device)
        events = prof.key_averages()
        # the kernels' own rows (an op's row repeats its kernels' time)
        busy = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU) / 1e3
        print(f"\n{name} of {n_bytes} bytes: {busy:.1f} ms of kernels; its top {top} ops by kernel time, then by host time:")
        for key in ("self_device_time_total",) * (device.type == "cuda") + ("self_cpu_time_total",):
            print(events.table(sort_by=key, row_limit=top, max_name_column_width=60))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS, help="official model JSONs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steps", type=int, default=128, help="steps timed, each alone")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--profile-steps", type=int, default=16, help="steps under torch.profiler (0: none)")
    parser.add_argument("--prefill-bytes", type=int, default=8192)
    parser.add_argument("--prefill-profile", type=int, default=0, metavar="TOP",
                        help="print the TOP ops of the prefill and of the forward (torch.profiler)")
    parser.add_argument("--paths", nargs="+", choices=["graph", "eager"], default=None,
                        help="default: graph and eager on CUDA, eager elsewhere")
    parser.add_argument("--quick", action="store_true", help="a tiny 2-stage model, contexts 64 and 256, batch 1 and 4")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    paths = args.paths or (["graph", "eager"] if device.type == "cuda" else ["eager"])
    if args.quick:
        configs = [("quick (tiny, 2-stage)", HNetConfig.from_dict(QUICK_CONFIG))]
        args.contexts, args.batch_sizes, args.steps, args.warmup = [64, 256], [1, 4], 4, 1
        args.profile_steps, args.prefill_bytes = min(args.profile_steps, 1), 256
    else:
        if missing := [c for c in args.config if not (REPO / c).exists() and not Path(c).exists()]:
            sys.exit(f"{missing[0]}: not found (the official configs: mkdir -p .ref && cp -r "
                     "../shared/reference/configs .ref/)")
        configs = [(Path(c).stem, HNetConfig.from_json(c if Path(c).exists() else REPO / c)) for c in args.config]

    name, _ = device_info(device)
    print(environment(name))
    print(f"decode: {args.warmup} warmup + {args.steps} timed steps, each alone; {args.profile_steps} profiled; "
          f"{dtype}, random weights, teacher-forced text\n")
    print("| config | context | batch | path | ms/byte median | ms/byte p90 | bytes/s | GPU ms/step | boundaries |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    prefills = []
    for label, config in configs:
        torch.manual_seed(0)
        model = HNetForCausalLM(config, device=device, dtype=dtype).eval()
        for context in args.contexts:
            for batch in args.batch_sizes:
                ids = text_rows(batch, context + args.warmup + args.steps + args.profile_steps + 1).to(device)
                timed_from, timed_to = context + args.warmup, context + args.warmup + args.steps
                fractions = boundary_fractions(model, ids[:, :timed_to], timed_from)
                for path in paths:
                    r = decode_row(model, ids, context, args.steps, args.warmup, args.profile_steps, path == "graph",
                                   device)
                    print(f"| {label} | {context} | {batch} | {path} | {r['median']:.2f} | {r['p90']:.2f} | "
                          f"{r['bytes_per_s']:.0f} | {r['gpu_ms']:.2f} | {' / '.join(f'{f:.3f}' for f in fractions)} |",
                          flush=True)
                if device.type == "cuda":
                    gc.collect()  # a decoder and its graphs form reference cycles: free them before the next row
                    torch.cuda.empty_cache()
        prefills.append((label, *prefill_vs_forward(model, args.prefill_bytes, device, top=args.prefill_profile)))
        del model
    print(f"\n| config | prefill of {args.prefill_bytes} bytes (ms) | one forward, no cache (ms) | prefill / forward |")
    print("| --- | ---: | ---: | ---: |")
    for label, fill, forward in prefills:
        print(f"| {label} | {fill:.1f} | {forward:.1f} | {fill / forward:.2f} |")


if __name__ == "__main__":
    main()
