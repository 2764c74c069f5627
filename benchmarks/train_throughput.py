"""Bytes/s and peak memory of one training step of a preset, exactly as `hnet train` takes it.

    python benchmarks/train_throughput.py                                  # text small presets, CUDA, bf16
    python benchmarks/train_throughput.py hnet/configs/text/hnet_1stage_small.json --steps 20
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
from pathlib import Path

import torch

from hnet.config import RunConfig
from hnet.eval.flops import device_info
from hnet.eval.timing import text_batch, time_train_steps
from hnet.training import model_for_run


def measure(config_path: str, device, steps: int, warmup: int) -> dict:
    config = RunConfig.from_json(config_path)
    torch.manual_seed(0)
    model = model_for_run(config).to(device)
    batch = text_batch(config.train.batch_size, config.data.seq_len, device)
    result = time_train_steps(model, config.train, batch, device, steps, warmup)
    return {"config": config_path, "batch": f"{config.train.batch_size} x {config.data.seq_len}", **result}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["hnet/configs/text/hnet_1stage_small.json", "hnet/configs/text/hnet_2stage_small.json"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the tiny preset, 2 steps")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = args.configs
    if args.quick:
        configs, args.steps, args.warmup = ["hnet/configs/text/hnet_1stage_tiny.json"], 2, 1
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
