"""Bytes/s and peak memory of one training step of a preset, exactly as `hnet train` takes it.

    python benchmarks/train_throughput.py                                  # text small presets, CUDA, bf16
    python benchmarks/train_throughput.py configs/text/hnet_1stage_small.json --steps 20
    python benchmarks/train_throughput.py --device cpu --quick             # tiny preset: checks that it runs

A step is the loop's own: forward in bf16 autocast (fp32 on CPU) on packed batches of the preset's
shape (batch_size x seq_len bytes, documents of the bundled text so the boundary rate is a text one),
cross-entropy + ratio loss, backward, gradient clipping, AdamW. The model has random weights: the
routing of an untrained model chunks differently from a trained one, so bytes per chunk is printed
beside the speed. Timing: warmup steps, then CUDA-synchronised wall clock over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hnet.config import RunConfig
from hnet.layers.cuda_graphs import uses_cuda_graphs
from hnet.training import model_for_run
from hnet.training.loop import default_ratio_targets, forward_loss
from hnet.training.metrics import bytes_per_chunk

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "hnet" / "samples" / "tinyshakespeare.txt"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device) -> tuple[str, float]:
    """(the device's name, its dense bf16 peak in TFLOP/s or nan)."""
    if device.type != "cuda":
        return "cpu", float("nan")
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


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


def print_tuning():
    """The launch configurations the fast path chose by timing in this process (none without a GPU)."""
    if torch.cuda.is_available():
        from hnet.ops.triton.tuning import tuning_report
        for line in tuning_report():
            print("tuned:", line)


def text_batch(batch_size: int, seq_len: int, device, doc_len: int = 2048) -> dict:
    """Rows of the sample text cut into documents of `doc_len` bytes, each starting with BOS 254."""
    data = torch.frombuffer(bytearray(TEXT.read_bytes()), dtype=torch.uint8).long()
    ids = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
    starts = []
    for row in range(batch_size):
        offset = (row * 7919 * seq_len) % (len(data) - seq_len - 1)
        ids[row] = data[offset: offset + seq_len + 1]
        for s in range(0, seq_len, doc_len):
            ids[row, s] = 254
            starts.append(row * seq_len + s)
    labels = ids[:, 1:].clone()
    labels[labels == 254] = -100
    cu = torch.tensor(starts + [batch_size * seq_len], dtype=torch.int32)
    return {"input_ids": ids[:, :-1].contiguous().to(device), "labels": labels.to(device), "cu_seqlens": cu.to(device)}


def time_train_steps(model, tc, batch: dict, device, steps: int, warmup: int) -> dict:
    """Warmup, then the mean time of `steps` training steps of `model` on one fixed batch."""
    optimizer = torch.optim.AdamW(model.param_groups(tc.lr, tc.weight_decay, tc.lr_multipliers), lr=tc.lr,
                                  betas=tuple(tc.betas), fused=device.type == "cuda")
    targets = tc.ratio_targets or default_ratio_targets(model.num_stages - 1)
    # CUDA graphs replay the weights' casts, which autocast's cache would skip (`use_cuda_graphs`).
    graphs = uses_cuda_graphs(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=not graphs)

    def step():
        with autocast:
            loss, _, _, routing = forward_loss(model, batch, targets, tc.ratio_loss_weight, lambda t: t, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return routing

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
    n_bytes = batch["input_ids"].numel()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": seconds * 1e3,
        "bytes_per_s": n_bytes / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        # cumulative over the stages, over all timed steps: the work the timing covers
        "bytes_per_chunk": bytes_per_chunk([n_bytes * steps] + (chunks.tolist() if routing else [])),
    }


def measure(config_path: str, device, steps: int, warmup: int) -> dict:
    config = RunConfig.from_json(config_path)
    torch.manual_seed(0)
    model = model_for_run(config).to(device)
    batch = text_batch(config.train.batch_size, config.data.seq_len, device)
    result = time_train_steps(model, config.train, batch, device, steps, warmup)
    return {"config": config_path, "batch": f"{config.train.batch_size} x {config.data.seq_len}", **result}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["configs/text/hnet_1stage_small.json", "configs/text/hnet_2stage_small.json"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the tiny preset, 2 steps")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = args.configs
    if args.quick:
        configs, args.steps, args.warmup = ["configs/text/hnet_1stage_tiny.json"], 2, 1
    name, _ = device_info(device)
    print(f"device: {name}; torch {torch.__version__}")
    results = [measure(c, device, args.steps, args.warmup) for c in configs]
    print(f"{'config':45} {'params':>11} {'batch':>10} {'ms/step':>9} {'bytes/s':>11} {'peak GiB':>9}  bytes/chunk")
    for r in results:
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['config']:45} {r['params']:>11,} {r['batch']:>10} {r['ms_per_step']:>9.1f} {r['bytes_per_s']:>11,.0f} "
              f"{peak:>9}  {', '.join(f'{x:.2f}' for x in r['bytes_per_chunk'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
