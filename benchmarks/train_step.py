"""A whole training step of the paper's L-sized H-Nets: Triton fast path vs the PyTorch reference path vs an
isotropic Transformer of matched FLOPs per byte, trained by the same step.

    python benchmarks/train_step.py                                      # .ref/configs/hnet_{1,2}stage_L.json, CUDA
    python benchmarks/train_step.py --config path/to/hnet_2stage_L.json --batch 2
    python benchmarks/train_step.py --config .ref/configs/hnet_1stage_L.json --profile 30   # + where the time goes
    python benchmarks/train_step.py --config .ref/configs/hnet_1stage_L.json --no-reference --unbucketed
    python benchmarks/train_step.py --no-reference --routed-at-targets   # + each H-Net at its target compression
    python benchmarks/train_step.py --no-reference --routed-at-targets --unfused --keep-conv --keep-states --glue 25   # fusion, recompute, glue
    TRITON_INTERPRET=1 python benchmarks/train_step.py --device cpu --quick   # tiny models: checks the code path

The default configs are the official ones, which the repository does not carry: copy them into the
ignored .ref/ folder first (from the repository root, next to the shared reference checkout):

    mkdir -p .ref && cp -r ../shared/reference/configs .ref/

Rows are printed as a markdown table, to paste into benchmarks/RESULTS.md with the header lines above it.

A step: forward in bf16 autocast (fp32 on CPU) on packed batches of the bundled text (documents of 2048
bytes), cross-entropy + ratio loss (`hnet.training.step.train_step`, alpha 0.03, targets N = 6 or
(3, 3)), backward, gradient clipping, fused AdamW; random weights. The reference path is the same step
with HNET_REFERENCE=1, which `hnet.ops.dispatch` reads at every call. If a batch does not fit, it is
halved until it does and the row says the batch used.

Model FLOPs per byte come from `hnet.eval.flops.flops_per_byte` (forward; training counted as 3x): for the
H-Net at the bytes per chunk its (untrained) router produced over the timed steps (all of them: in the
first steps of random weights that count moves several-fold), so MFU counts the work the timing covers.
The Transformer ("T<n>", `hnet.eval.baselines.size_baseline`) is sized to the H-Net's forward FLOPs per
byte at the target bytes per chunk (6, or 3 then 9 cumulative), the budget the H-Net is trained for.
MFU = 3 x FLOPs/byte x bytes/s / a bf16 peak: the datasheet's dense peak (989 TFLOP/s for H100/H200 SXM,
or --peak-tflops), and the peak measured in the same run (a bf16 8192^3 matmul, `hnet.eval.timing.ceilings`,
as `kernels.py` measures it), the one the targets name.

Beside each row, the floor of its step (`hnet.eval.floor`): its matmuls and causal attention at the matmul
rate measured in the run, plus the least traffic of the optimizer, the weight casts, the residual norms and
the Mamba-2 mixers at the copy rate measured in the run, for the batch and bytes per chunk of the row; and
the step's time over it ("x floor"). Each H-Net row's floor is also printed by part.

--unfused adds the fast rows with Mamba-2's mixer op by op (`kernel_path("unfused")`, HNET_FUSED_MAMBA2=0),
the same kernels without the fused Function, to time the fusion within one run; --keep-conv the rows with the
fused mixers keeping their convolution's output instead of recomputing it in the backward (time for memory),
--keep-states the same for the scan's entering states and C.B. --glue N lists, for one
fast step of each H-Net, the N call sites that fill, copy, cast or concatenate the most bytes (every such
aten op the step dispatches from Python, forward and backward, by source line or autograd node; kernels
that libraries launch internally, e.g. flash attention's, are not seen). --saved N lists what one fast step's
forward keeps for the backward, by module and by line, beside the step's peak memory.

An untrained router's compression is not the target (from 2 to 2000 bytes per chunk in
the 1-stage L's first 7 steps, and a second stage that may keep almost nothing), so its H-Net does more or
less work than the Transformer is matched to: --routed-at-targets adds a row of each H-Net whose boundaries
are fixed at the targets (one every 6th byte, or every 3rd position at each stage:
`hnet.chunking.fixed.route_every`), the comparison at matched FLOPs (also on the reference path).
"""

from __future__ import annotations

import math
import re
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hnet import HNetConfig, HNetForCausalLM
from hnet.chunking.fixed import route_every
from hnet.config import TrainConfig, default_ratio_targets
from hnet.eval.baselines import size_baseline
from hnet.eval.floor import step_floor
from hnet.eval.flops import device_info, flops_per_byte, mfu
from hnet.eval.timing import (DOC_BYTES, ceilings, environment, fitting, load_model_config, parse_shape_args,
                              print_tuning, shape_parser, text_batch, time_train_steps)
from hnet.layers.cuda_graphs import use_cuda_graphs
from hnet.layers.isotropic import Isotropic
from hnet.layers.mamba2 import Mamba2
from hnet.ops.dispatch import kernel_path
from hnet.training import build_optimizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [".ref/configs/hnet_1stage_L.json", ".ref/configs/hnet_2stage_L.json"]


def train_step_once(config: HNetConfig, device, batch: int, seq_len: int, steps: int, warmup: int,
                    bucket_lengths: bool | None = None, targets: list[float] | None = None,
                    cuda_graphs: bool = False, keep: tuple[str, ...] = ()) -> dict:
    """targets: route at these compressions (`hnet.chunking.fixed.route_every`); None: as the router decides.
    keep: what the fused Mamba-2 mixers keep for the backward instead of recomputing it: "conv" their
    convolution's output (`Mamba2.recompute_conv`), "states" the scan's entering states and C.B
    (`Mamba2.recompute_states`)."""
    torch.manual_seed(0)
    model = HNetForCausalLM(config, device=device)
    for module in model.modules():
        if isinstance(module, Isotropic):
            module.bucket_lengths = bucket_lengths
        elif isinstance(module, Mamba2):
            module.recompute_conv, module.recompute_states = "conv" not in keep, "states" not in keep
    if targets is not None:
        route_every(model, targets)
    use_cuda_graphs(model, cuda_graphs)
    r = time_train_steps(model, TrainConfig(), text_batch(batch, seq_len, device), device, steps, warmup)
    use_cuda_graphs(model, False)  # frees the graphs' memory with the model
    peak = r["peak_memory_gib"]
    return {"params": r["params"], "ms": r["ms_per_step"], "bytes_per_s": r["bytes_per_s"],
            "peak_gib": float("nan") if peak is None else peak, "bytes_per_chunk": r["bytes_per_chunk"]}


def profile_step(config: HNetConfig, device, batch: int, seq_len: int, warmup: int, rows: int,
                 targets: list[float] | None = None) -> None:
    """One fast-path step under torch.profiler, after `warmup` unprofiled ones: the ops and kernels that
    take the most GPU (or CPU) time, and the profiled step's wall-clock to set their total against.
    targets: routed at these compressions (`route_every`)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = HNetForCausalLM(config, device=device)
    if targets is not None:
        route_every(model, targets)
    data = text_batch(batch, seq_len, device)
    # One optimizer throughout: a new one would initialise its state inside the profiled step (session 10's
    # profile counted those 642 zero fills of the 1-stage L's 214 parameters as the step's).
    optimizer = build_optimizer(model, TrainConfig())
    with kernel_path("fast"):
        time_train_steps(model, TrainConfig(), data, device, max(warmup, 1), 0, optimizer)  # compile, allocate
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            r = time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
    by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=by, row_limit=rows))
    print(f"profiled step: {r['ms_per_step']:.1f} ms wall-clock (profiler overhead included), batch {batch} x {seq_len}")
    if device.type == "cuda":  # a step longer than its GPU time is waiting on the host: where does host time go?
        print("\nthe same step by host time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
        print_host_syncs(model, data, device, optimizer)


def print_host_syncs(model, data, device, optimizer) -> None:
    """The lines of one step that make the host wait for the GPU (CUDA's sync debug mode), with counts."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sites: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            site = f"{Path(w.filename).name}:{w.lineno}"
            sites[site] = sites.get(site, 0) + 1
    print(f"host syncs in one step: {sum(sites.values())}")
    for site, count in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"  {count:4d}  {site}")


# aten ops that only move or fill memory: what a fused kernel or a view would not need
GLUE_OPS = {"fill_", "zero_", "zeros", "zeros_like", "new_zeros", "full", "new_full", "ones_like", "index_fill_",
            "masked_fill", "masked_fill_", "copy_", "clone", "_to_copy", "cat", "stack", "constant_pad_nd"}


class GlueLog(TorchDispatchMode):
    """Counts the GLUE_OPS by (op, call site) with the bytes they write."""

    def __init__(self):
        super().__init__()
        self.sites: dict[tuple[str, str], list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = func.__name__.split(".")[0]
        if op in GLUE_OPS:
            site = call_site()
            if site is None:
                return out
            written = out if isinstance(out, torch.Tensor) else args[0]
            entry = self.sites.setdefault((op, site), [0, 0])
            entry[0] += 1
            entry[1] += written.numel() * written.element_size()
        return out


def call_site() -> str | None:
    """The innermost line of the model's code that led here (not the training step's or the benchmark's), and
    in the backward the autograd node running; None inside Triton's interpreter (its copies of a kernel's
    arguments are no GPU work)."""
    stack = traceback.extract_stack()
    if any(f.filename.endswith("triton/runtime/interpreter.py") for f in stack):
        return None
    node = torch._C._current_autograd_node()
    model_code = [str(REPO / "hnet" / sub) for sub in ("ops", "layers", "chunking", "models")]
    where = next((f"{Path(f.filename).relative_to(REPO)}:{f.lineno}" for f in reversed(stack)
                  if any(f.filename.startswith(m) for m in model_code)), None)
    if node is None:
        return where or "?"
    return f"{where}, backward of {node.name()}" if where else f"backward of {node.name()}"


def glue_report(config: HNetConfig, device, batch: int, seq_len: int, rows: int, targets=None) -> None:
    """One fast-path step after one unlogged: the `rows` call sites of GLUE_OPS writing the most bytes."""
    torch.manual_seed(0)
    model = HNetForCausalLM(config, device=device)
    if targets is not None:
        route_every(model, targets)
    data = text_batch(batch, seq_len, device)
    optimizer, log = build_optimizer(model, TrainConfig()), GlueLog()
    with kernel_path("fast"):
        time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
        with log:
            time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
    total_calls = sum(c for c, _ in log.sites.values())
    total_bytes = sum(b for _, b in log.sites.values())
    print(f"{total_calls} glue ops writing {total_bytes / 2**30:.2f} GiB in one step; the {rows} largest sites:")
    print("| op | where | calls | MiB written |\n| --- | --- | ---: | ---: |")
    for (op, where), (calls, nbytes) in sorted(log.sites.items(), key=lambda kv: -kv[1][1])[:rows]:
        print(f"| {op} | {where} | {calls} | {nbytes / 2**20:,.1f} |")


class SavedLog:
    """The bytes a forward saves for the backward, by module (layer indices folded into *) and the model's line
    that saved them, each storage counted once, at its whole size (a view keeps all of its storage alive)."""

    def __init__(self, model):
        self.modules: list[str] = []
        self.storages: set[int] = set()
        self.sites: dict[tuple[str, str], list[int]] = {}
        self.handles = []
        for name, module in model.named_modules():
            where = re.sub(r"\.\d+(?=\.|$)", ".*", name) or "(model)"
            self.handles.append(module.register_forward_pre_hook(lambda m, a, w=where: self.modules.append(w)))
            # `and None`: a forward hook that returns something replaces the module's output
            self.handles.append(module.register_forward_hook(lambda m, a, o: self.modules.pop() and None))
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.storages and key not in self.parameters:
            self.storages.add(key)
            entry = self.sites.setdefault((self.modules[-1] if self.modules else "(outside)", call_site() or "?"), [0, 0])
            entry[0] += 1
            entry[1] += storage.nbytes()
        return t

    def close(self):
        for handle in self.handles:
            handle.remove()


def saved_report(config: HNetConfig, device, batch: int, seq_len: int, rows: int, targets=None) -> None:
    """One fast-path step after one unlogged: what its forward keeps for the backward, by module and line,
    beside the step's peak memory (the saved tensors, the parameters, their gradients and AdamW's state)."""
    torch.manual_seed(0)
    model = HNetForCausalLM(config, device=device)
    if targets is not None:
        route_every(model, targets)
    data = text_batch(batch, seq_len, device)
    optimizer, log = build_optimizer(model, TrainConfig()), SavedLog(model)
    with kernel_path("fast"):
        time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autograd.graph.saved_tensors_hooks(log.pack, lambda t: t):
            time_train_steps(model, TrainConfig(), data, device, 1, 0, optimizer)
    log.close()
    total = sum(b for _, b in log.sites.values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(f"{total / 2**30:.2f} GiB saved for the backward by one step's forward (parameters {params / 2**30:.2f} "
          f"GiB, with their gradients and AdamW's state about {4 * params / 2**30:.2f}); peak {peak:.2f} GiB")
    by_module: dict[str, int] = {}
    for (module, _), (_, nbytes) in log.sites.items():
        by_module[module] = by_module.get(module, 0) + nbytes
    print("| module | GiB saved | % |\n| --- | ---: | ---: |")
    for module, nbytes in sorted(by_module.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"| {module} | {nbytes / 2**30:.3f} | {100 * nbytes / total:.1f} |")
    print(f"\nthe {rows} largest (module, line) sites:\n| module | where | tensors | MiB saved |\n| --- | --- | ---: | ---: |")
    for (module, where), (count, nbytes) in sorted(log.sites.items(), key=lambda kv: -kv[1][1])[:rows]:
        print(f"| {module} | {where} | {count} | {nbytes / 2**20:,.1f} |")


def main(argv=None):
    parser = shape_parser(__doc__, DEFAULT_CONFIGS)
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default: known H100/H200)")
    parser.add_argument("--no-transformer", action="store_true", help="skip the matched Transformer")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference path (HNET_REFERENCE=1)")
    parser.add_argument("--unbucketed", action="store_true", help="also the fast path with the chunk counts "
                        "of the inner stacks not rounded up (`hnet.ops.packed.bucketed_length`)")
    parser.add_argument("--routed-at-targets", action="store_true", help="also each H-Net's fast path with its "
                        "boundaries fixed at the ratio targets (the work its matched Transformer is sized to)")
    parser.add_argument("--cuda-graphs", action="store_true", help="also the fast rows (and the Transformer) "
                        "with every stack replayed as CUDA graphs (`hnet.layers.cuda_graphs.use_cuda_graphs`)")
    parser.add_argument("--unfused", action="store_true", help="also the fast rows with Mamba-2's mixer op by op "
                        "(HNET_FUSED_MAMBA2=0): the fusion's gain within one run")
    parser.add_argument("--keep-conv", action="store_true", help="also the fast rows with the fused Mamba-2 mixers "
                        "keeping their convolution's output for the backward instead of recomputing it")
    parser.add_argument("--keep-states", action="store_true", help="also the fast rows with the fused Mamba-2 "
                        "mixers keeping the scan's entering states and C.B instead of recomputing them")
    parser.add_argument("--glue", type=int, metavar="ROWS", help="also list, for one fast step of each H-Net, the "
                        "ROWS call sites that fill, copy, cast or concatenate the most bytes")
    parser.add_argument("--saved", type=int, metavar="ROWS", help="also list, for one fast step of each H-Net, "
                        "what its forward saves for the backward, by module and by line (ROWS of each)")
    parser.add_argument("--profile", type=int, metavar="ROWS", help="also profile one fast-path step of each "
                        "H-Net (and of its routed-at-targets row) at the batch that fitted, printing the ROWS "
                        "ops and kernels of most time")
    args = parse_shape_args(parser, argv, REPO)
    device = torch.device(args.device)
    name, peak = device_info(device)
    peak = args.peak_tflops or peak
    copy_gbps, measured = ceilings(device)
    print(environment(name))
    print(f"training step: bf16 autocast={device.type == 'cuda'}, {args.warmup} warmup + {args.steps} timed steps, "
          f"requested batch {args.batch} x {args.seq_len} bytes, MFU against {peak} TFLOP/s (datasheet) and "
          f"{measured:.0f} TFLOP/s (bf16 matmul measured now); floor at that rate and {copy_gbps:.0f} GB/s (copy)")

    rows, fitted = [], []  # fitted: (label, config, batch, targets) of each H-Net's fast path, for --profile
    for path in args.config:
        config = load_model_config(str(REPO / path))  # an absolute path stays itself
        stage_targets = default_ratio_targets(config.num_stages - 1)
        targets = [float(x) for x in np.cumprod(stage_targets)]
        budget = flops_per_byte(config, args.seq_len, targets)
        # label, config, kernel path, bucketing, fixed routing targets, CUDA graphs, conv output kept
        stem = Path(path).stem
        runs = [(f"{stem} fast", config, "fast", None, None, False, ())]
        if args.unbucketed:
            runs.append((f"{stem} fast, unbucketed", config, "fast", False, None, False, ()))
        if args.routed_at_targets:
            runs.append((f"{stem} fast, routed at targets", config, "fast", None, stage_targets, False, ()))
        for variant, kpath, keep, asked in (("mixer unfused", "unfused", (), args.unfused),
                                            ("conv kept", "fast", ("conv",), args.keep_conv),
                                            ("states kept", "fast", ("states",), args.keep_states)):
            if asked:
                runs.append((f"{stem} fast, {variant}", config, kpath, None, None, False, keep))
                if args.routed_at_targets:
                    runs.append((f"{stem} fast, {variant}, routed at targets", config, kpath, None, stage_targets, False,
                                 keep))
        if args.cuda_graphs:
            runs.append((f"{stem} fast, CUDA graphs", config, "fast", None, None, True, ()))
            if args.routed_at_targets:
                runs.append((f"{stem} fast, routed at targets, CUDA graphs", config, "fast", None, stage_targets, True,
                             ()))
        if not args.no_reference:
            runs.append((f"{stem} reference", config, "reference", None, None, False, ()))
            if args.routed_at_targets:
                runs.append((f"{stem} reference, routed at targets", config, "reference", None, stage_targets, False,
                             ()))
        if not args.no_transformer:
            tconfig = size_baseline("transformer", budget, args.seq_len, config)
            tlabel = f"{tconfig.arch_layout[0]} d{tconfig.d_model[0]} (matched to {stem})"
            runs.append((tlabel, tconfig, "fast", None, None, False, ()))
            if args.cuda_graphs:
                runs.append((f"{tlabel}, CUDA graphs", tconfig, "fast", None, None, True, ()))
        for label, cfg, kpath, bucket, fixed, graphs, keep in runs:
            with kernel_path(kpath):
                batch, r = fitting(lambda b: train_step_once(cfg, device, b, args.seq_len, args.steps, args.warmup,
                                                             bucket, fixed, graphs, keep), args.batch)
            if r is None:
                rows.append((label, "-", f"OOM at 1 x {args.seq_len}", *["-"] * 9))
                continue
            if cfg is config and kpath == "fast" and bucket is None and not graphs and not keep:
                fitted.append((label, cfg, batch, fixed))
            fpb = flops_per_byte(cfg, args.seq_len, r["bytes_per_chunk"])
            floor = step_floor(cfg, batch, args.seq_len, r["params"], r["bytes_per_chunk"], min(DOC_BYTES, args.seq_len))
            floor_ms = floor.ms(measured, copy_gbps)
            if cfg.num_stages > 1 and not math.isnan(floor_ms):
                parts = ", ".join(f"{k} {v:.1f}" for k, v in floor.parts_ms(measured, copy_gbps).items())
                print(f"floor of {label}: {floor_ms:.1f} ms = {parts} ({floor.matmul_tflop:.2f} TFLOP of matmuls, "
                      f"{floor.attention_tflop:.2f} of attention, "
                      + ", ".join(f"{k} {v:.1f} GB" for k, v in floor.traffic_gb.items()) + ")")
            rows.append((label, f"{r['params'] / 1e6:.1f}M", f"{batch} x {args.seq_len}", f"{r['ms']:.1f}",
                         "-" if math.isnan(floor_ms) else f"{floor_ms:.1f}",
                         "-" if math.isnan(floor_ms) else f"{r['ms'] / floor_ms:.2f}",
                         f"{r['bytes_per_s']:,.0f}", f"{fpb / 1e9:.3f}", f"{100 * mfu(fpb, r['bytes_per_s'], peak):.1f}",
                         f"{100 * mfu(fpb, r['bytes_per_s'], measured):.1f}",
                         f"{r['peak_gib']:.1f}", ", ".join(f"{x:.2f}" for x in r["bytes_per_chunk"]) or "-"))
            print(" | ".join(rows[-1]), flush=True)

    print()
    print(f"| model | params | batch | ms/step | floor ms | x floor | bytes/s | fwd GFLOP/byte | MFU % of {peak:.0f} "
          f"| MFU % of {measured:.0f} (measured) | peak GiB | bytes/chunk (cumulative) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if math.isnan(peak):
        print("(MFU: no known peak for this device; pass --peak-tflops)")
    for label, cfg, batch, fixed in fitted if args.profile else []:
        print(f"\nprofile of one {label} step:")
        profile_step(cfg, device, batch, args.seq_len, args.warmup, args.profile, fixed)
    for label, cfg, batch, fixed in fitted if args.glue else []:
        print(f"\nglue of one {label} step:")
        glue_report(cfg, device, batch, args.seq_len, args.glue, fixed)
    for label, cfg, batch, fixed in fitted if args.saved else []:
        print(f"\nsaved for the backward in one {label} step:")
        saved_report(cfg, device, batch, args.seq_len, args.saved, fixed)
    print_tuning()


if __name__ == "__main__":
    main()
