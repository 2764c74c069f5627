"""What the benchmark scripts share: a timer, the ceilings measured on the device, a batch of the bundled
text, a training step timed as the loop takes it, and a batch halved until it fits.

    bench(fn, device)                          # median ms of fn()
    bench_alternating({"a": fa, "b": fb}, device)   # median ms of each, their calls taking turns
    ceilings(device)                           # (copy GB/s, bf16 matmul TFLOP/s) measured now
    text_batch(batch_size, seq_len, device)    # packed rows of the sample text, documents of 2048 bytes
    time_train_steps(model, train_config, batch, device, steps, warmup, optimizer=None)
    fitting(run, batch)                        # run(b) at the largest of batch, batch / 2, ... that fits
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hnet.config import PRESETS_DIR, HNetConfig, RunConfig
from hnet.constants import BOS, IGNORE_INDEX
from hnet.data.sources import SAMPLES_DIR
from hnet.layers.cuda_graphs import uses_cuda_graphs
from hnet.training import Objective, build_optimizer, train_step
from hnet.training.metrics import bytes_per_chunk

TEXT = SAMPLES_DIR / "tinyshakespeare.txt"
DOC_BYTES = 2048  # text_batch's documents: the packed sequences of a benchmark's batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn, device, reps: int = 3) -> float:
    """Median milliseconds of fn() (triton's do_bench on CUDA, a wall clock elsewhere)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_alternating(fns: dict, device, rounds: int = 15) -> dict:
    """Median wall-clock milliseconds of each fn, their calls taking turns (after one warmup call each), so
    that a slow stretch of a noisy host falls on all of them alike: for a comparison of host-bound calls,
    where do_bench's 100 ms of repetitions hold two or three calls of each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_gib(fn, device) -> float:
    """GiB that one call of fn allocates beyond what is held before it (CUDA; nan elsewhere): run it
    alone, so that a benchmark's own buffers do not count."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def ceilings(device) -> tuple[float, float]:
    """(GB/s of a device-to-device copy, bf16 matmul TFLOP/s) measured now; nan off CUDA."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    gbps = 2 * src.numel() / bench(lambda: dst.copy_(src), device) / 1e6
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    tflops = 2 * 8192**3 / bench(lambda: a @ a, device) / 1e9
    return gbps, tflops


def environment(device_name: str) -> str:
    """One line: the device and the versions a benchmark's figures depend on."""
    import triton

    return (f"device: {device_name}; torch {torch.__version__}; triton {triton.__version__}; "
            f"CUDA {torch.version.cuda}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")


def print_tuning():
    """Print the launch configurations the fast path chose by timing in this process (none without a GPU)."""
    if torch.cuda.is_available():
        from hnet.ops.triton.tuning import tuning_report

        for line in tuning_report():
            print("tuned:", line)


def load_model_config(path: str) -> HNetConfig:
    """An official model JSON, or the model of one of our run presets."""
    try:
        return HNetConfig.from_json(path)
    except ValueError:
        return RunConfig.from_json(path).model


def text_batch(batch_size: int, seq_len: int, device, doc_len: int = DOC_BYTES) -> dict:
    """Rows of the sample text cut into documents of `doc_len` bytes, each starting with BOS."""
    data = torch.frombuffer(bytearray(TEXT.read_bytes()), dtype=torch.uint8).long()
    ids = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
    starts = []
    for row in range(batch_size):
        offset = (row * 7919 * seq_len) % (len(data) - seq_len - 1)
        ids[row] = data[offset: offset + seq_len + 1]
        for s in range(0, seq_len, doc_len):
            ids[row, s] = BOS
            starts.append(row * seq_len + s)
    labels = ids[:, 1:].clone()
    labels[labels == BOS] = IGNORE_INDEX
    cu = torch.tensor(starts + [batch_size * seq_len], dtype=torch.int32)
    return {"input_ids": ids[:, :-1].contiguous().to(device), "labels": labels.to(device), "cu_seqlens": cu.to(device)}


def time_train_steps(model, tc, batch: dict, device, steps: int, warmup: int, optimizer=None) -> dict:
    """Warmup, then the mean time of `steps` training steps of `model` on one fixed batch. optimizer: one to
    go on with (a profiled step after unprofiled ones); a new one (the default) initialises its state in its
    first step, three fills a parameter with fused AdamW, two of them the parameter's size."""
    optimizer = optimizer or build_optimizer(model, tc)
    objective = Objective.of(tc, model.num_stages - 1)
    # CUDA graphs replay the weights' casts, which autocast's cache would skip (`use_cuda_graphs`).
    graphs = uses_cuda_graphs(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=not graphs)

    def step():
        return train_step(model, optimizer, [batch], objective, tc.grad_clip).last.routing

    model.forward = autocast(model.forward)  # the forward alone under autocast, as accelerate wraps it
    try:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        chunks = 0  # per stage, summed over the timed steps on the device: an untrained router's count moves
        for _ in range(steps):
            routing = step()
            if routing:
                chunks = chunks + torch.stack([r.boundary_mask.sum() for r in routing])
        sync(device)
        seconds = (time.perf_counter() - start) / steps
    finally:
        del model.forward  # the class's forward again
    n_bytes = batch["input_ids"].numel()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": seconds * 1e3,
        "bytes_per_s": n_bytes / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        # cumulative over the stages, over all timed steps: the work the timing covers
        "bytes_per_chunk": bytes_per_chunk([n_bytes * steps] + (chunks.tolist() if routing else [])),
    }


def fitting(run, batch: int) -> tuple[int, object]:
    """run(b) at the largest of batch, batch / 2, ..., 1 that fits in memory: (that b, its result), or
    (0, None) if none does."""
    for b in (batch >> k for k in range(batch.bit_length())):
        try:
            return b, run(b)
        except torch.cuda.OutOfMemoryError:
            pass
        torch.cuda.empty_cache()  # outside the handler: its traceback no longer holds the failed step's tensors
    return 0, None


QUICK_CONFIGS = [str(PRESETS_DIR / "text" / f"hnet_{n}stage_tiny.json") for n in (1, 2)]


def shape_parser(description: str, default_configs: list[str]) -> argparse.ArgumentParser:
    """The options of a benchmark over model configs at a batch shape (train_step.py, forward.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=default_configs, help="H-Net model JSONs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="rows of --seq-len bytes (halved while it does not fit)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny presets, batch 2 x 128, 1 step: checks the code path")
    return parser


def parse_shape_args(parser: argparse.ArgumentParser, argv, repo: Path) -> argparse.Namespace:
    """The options, with --quick applied, and a one-line exit naming a config that is not there (paths are
    relative to the repository `repo`)."""
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.batch, args.seq_len, args.steps, args.warmup = QUICK_CONFIGS, 2, 128, 1, 0
    if missing := [p for p in args.config if not (repo / p).exists()]:
        sys.exit(f"{missing[0]}: not found (the official configs: mkdir -p .ref && cp -r ../shared/reference/configs .ref/)")
    return args
