"""One run on 1 process and on N (through `accelerate launch`: DDP, or FSDP with --set
train.distributed=fsdp), same config, global batch, steps and seed; then checkpoints moved between them.
Prints the two loss curves side by side with the gap between two identical 1-process runs beside them (the
noise of the GPU's own nondeterminism), bytes/s and the scaling efficiency at the same global batch and at
the same batch per GPU, peak memory per GPU, and the end of each moved run beside the run it left.

    python benchmarks/multi_gpu.py hnet/configs/text/hnet_1stage_small.json --steps 300 --processes 2 \\
        --set data.source=text --set data.path=.data/books
    python benchmarks/multi_gpu.py --dry-run      # a tiny preset on 2 CPU processes (gloo), a few seconds

NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0 and its PyTorch and NVSHMEM twins).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from hnet.config import RunConfig, apply_overrides, read_json
from hnet.eval.run_files import read_metrics
from hnet.models import latest_checkpoint
from hnet.training.launch import launch_env, train_command

REPO = Path(__file__).resolve().parents[1]


def launch(processes: int, config: Path, out: Path, overrides: list[str], resume: bool = False) -> None:
    cmd = train_command(config, out, processes, resume, overrides)
    print("$", " ".join(cmd), flush=True)
    with tempfile.TemporaryDirectory(prefix="hnet-launch-") as tmp:  # torchelastic's folders go there
        result = subprocess.run(cmd, env=launch_env(tmp), capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{out.name}: exit {result.returncode}\n{result.stderr[-4000:]}")


def training_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


def final_eval(run_dir: Path) -> float:
    return [r for r in read_metrics(run_dir) if "val_bpb" in r][-1]["val_bpb"]


def moved_run(runs: Path, written_by: int, resume_in: int, config: Path, overrides: list[str]) -> Path:
    """Copy the run written by `written_by` processes, drop its last checkpoint, resume in `resume_in`."""
    moved = runs / f"written_by_{written_by}_resumed_in_{resume_in}"
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(runs / f"p{written_by}", moved)
    shutil.rmtree(latest_checkpoint(moved))
    launch(resume_in, config, moved, overrides, resume=True)
    return moved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(REPO / "hnet" / "configs" / "text" / "hnet_1stage_small.json"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs/multi_gpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    parser.add_argument("--dry-run", action="store_true", help="tiny preset, 2 CPU processes, a few steps")
    args = parser.parse_args(argv)
    if not args.dry_run:
        return compare(args)
    with tempfile.TemporaryDirectory(prefix="hnet-mgpu-") as tmp:  # a dry run leaves nothing behind
        tmp = Path(tmp)
        args.config, args.steps, args.processes = str(REPO / "hnet" / "configs" / "text" / "hnet_1stage_tiny.json"), 4, 2
        args.runs_dir = str(tmp / "runs")
        args.set = ["data.seq_len=128", "data.max_bytes=20000", "train.eval_batches=1", f"data.cache_dir={tmp / 'cache'}", *args.set]
        return compare(args)


def compare(args) -> dict:
    """1 process, N processes, 1 again; the checkpoints moved between them."""
    n, steps, runs, config = args.processes, args.steps, Path(args.runs_dir), Path(args.config)
    overrides = [*args.set, f"train.max_steps={steps}", f"train.checkpoint_every={max(1, steps // 2)}",
                 "train.keep_checkpoints=2", f"train.eval_every={steps}", f"train.log_every={max(1, steps // 30)}"]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    gpus = torch.cuda.device_count()
    print(f"device: {gpus} x {device}; torch {torch.__version__}; config {config}; {steps} steps; 1 vs {n} processes")
    if torch.cuda.is_available() and gpus < n:
        sys.exit(f"--processes {n}: only {gpus} GPU(s) here")
    for p in (1, n):
        launch(p, config, runs / f"p{p}", overrides)
    launch(1, config, runs / "p1_again", overrides)

    one, many, again = (training_records(runs / name) for name in ("p1", f"p{n}", "p1_again"))
    shared = sorted(one.keys() & many.keys() & again.keys())
    print(f"\n| step | loss, 1 process | loss, {n} processes | difference | 1 process again | difference |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in shared:
        a, m, r = one[s]["loss"], many[s]["loss"], again[s]["loss"]
        print(f"| {s} | {a:.4f} | {m:.4f} | {m - a:+.4f} | {r:.4f} | {r - a:+.4f} |")
    gaps = np.array([abs(many[s]["loss"] - one[s]["loss"]) for s in shared])
    noise = np.array([abs(again[s]["loss"] - one[s]["loss"]) for s in shared])
    print(f"\nloss gap 1 vs {n} processes: largest {gaps.max():.4f}, mean {gaps.mean():.4f}; between two identical "
          f"1-process runs: largest {noise.max():.4f}, mean {noise.mean():.4f} ({len(shared)} logged steps)")

    def steady_rate(records: dict, run_steps: int = steps) -> float:  # past compilation and warmup
        return float(np.mean([r["bytes_per_s"] for s, r in records.items() if s > run_steps // 5]))

    # The same batch per GPU (N times the global batch), for a fifth of the steps: throughput only.
    run_config = RunConfig.from_dict(apply_overrides(read_json(config), args.set), str(config))
    global_batch, seq_len = run_config.train.batch_size, run_config.data.seq_len
    weak_steps = max(2, steps // 5)
    launch(n, config, runs / f"p{n}_weak", [*overrides, f"train.batch_size={n * global_batch}",
                                             f"train.max_steps={weak_steps}", f"train.eval_every={weak_steps}",
                                             f"train.checkpoint_every={weak_steps}"])
    weak = training_records(runs / f"p{n}_weak")

    rate1, rate_n, rate_weak = steady_rate(one), steady_rate(many), steady_rate(weak, weak_steps)
    straight = {p: final_eval(runs / f"p{p}") for p in (1, n)}
    print("\n| processes | global batch | bytes/s (after the first 20% of steps) | scaling efficiency | peak GiB per GPU |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for p, records, rate, rows in ((1, one, rate1, 1), (n, many, rate_n, 1), (n, weak, rate_weak, n)):
        peak = records[max(records)].get("peak_gib", ["-"])
        print(f"| {p} | {rows * global_batch} x {seq_len} | {rate:,.0f} | {rate / (p * rate1):.2f} | {', '.join(map(str, peak))} |")
    print(f"val bpb after {steps} steps: {', '.join(f'{p} process(es) {v:.4f}' for p, v in straight.items())}")

    moved = {(w, r): final_eval(moved_run(runs, w, r, config, overrides)) for w, r in ((n, 1), (1, n))}
    print("\n| checkpoint written by | resumed in | final val bpb | same run straight | difference |\n| ---: | ---: | ---: | ---: | ---: |")
    for (written_by, resume_in), end in moved.items():
        print(f"| {written_by} | {resume_in} | {end:.4f} | {straight[written_by]:.4f} | {end - straight[written_by]:+.2e} |")
    summary = {"loss_gap_max": float(gaps.max()), "noise_gap_max": float(noise.max()),
               "bytes_per_s": {1: rate1, n: rate_n, f"{n}_weak": rate_weak},
               "moved_minus_straight": [end - straight[w] for (w, _), end in moved.items()]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
