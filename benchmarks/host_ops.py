"""The host's work in a prefill of one fresh row and in one forward, counted on the CPU (no GPU needed).

    python benchmarks/host_ops.py --config .ref/configs/hnet_1stage_L.json .ref/configs/hnet_2stage_L.json

At batch 1 both calls are bound by the host (#23: a quarter of their wall-clock on an H200 is GPU work), so
what a prefill does beyond the forward shows in these counts before any GPU times it. A model with the
config's layers at tiny widths runs in float32 through the Triton kernels under the interpreter, with the
attention CUDA takes (the forward's SDPA for a fresh row's prefill; flash varlen over packed positions, here
an SDPA stand-in). Counted per call: torch
ops (views and the interpreter's own left out), those of them that launch a kernel on CUDA (not
allocations, not empty outputs), and Triton launches. --ops N lists the N launching ops of which the prefill
has the most more than the forward, with where it calls them.
"""

import argparse
import os
import traceback
from collections import Counter
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import hnet.layers.attention as attention  # noqa: E402
from hnet import HNetConfig, HNetForCausalLM  # noqa: E402
from hnet.eval.timing import load_model_config  # noqa: E402
from hnet.generation import prefill  # noqa: E402
from hnet.ops.dispatch import force_triton  # noqa: E402

PACKAGE = str(Path(attention.__file__).parents[1]) + os.sep
VIEWS = {"view", "_unsafe_view", "t", "as_strided", "detach", "alias", "unsqueeze", "squeeze", "slice", "select",
         "expand", "permute", "transpose", "split", "unbind", "split_with_sizes", "reshape", "narrow", "lift_fresh"}
NO_LAUNCH = {"empty", "new_empty", "empty_like", "empty_strided", "_local_scalar_dense"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.launching, self.by_name, self.sites = 0, 0, Counter(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name in VIEWS:
            return out
        stack = traceback.extract_stack()[:-1]
        ours = [i for i, frame in enumerate(stack) if frame.filename.startswith(PACKAGE)]
        if ours and any(f"{os.sep}triton{os.sep}" in frame.filename for frame in stack[ours[-1] + 1:]):
            return out  # the interpreter running a kernel
        self.ops += 1
        sizes = [o.numel() for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
        if name not in NO_LAUNCH and (not sizes or any(sizes)):
            self.launching += 1
            self.by_name[name] += 1
            site = stack[ours[-1]] if ours else None
            self.sites.setdefault(name, Counter())[f"{site.filename[len(PACKAGE):]}:{site.lineno}" if site else "?"] += 1
        return out


def count(fn) -> tuple[Count, int]:
    """fn's ops, and its Triton launches."""
    from triton.runtime.interpreter import InterpretedFunction

    launches, run = [0], InterpretedFunction.run

    def counted(self, *args, **kwargs):
        launches[0] += 1
        return run(self, *args, **kwargs)

    InterpretedFunction.run = counted
    try:
        with Count() as ops:
            fn()
    finally:
        InterpretedFunction.run = run
    return ops, launches[0]


def tiny(config_path: str) -> HNetForCausalLM:
    """The config's layers (an official model JSON, or a run preset's model) at widths 64, 96, 128 by stage."""
    cfg = load_model_config(config_path).to_dict()
    widths = [64, 96, 128][: len(cfg["d_model"])]
    cfg["d_model"] = widths
    cfg["d_intermediate"] = [2 * w if d else 0 for w, d in zip(widths, cfg["d_intermediate"])]
    cfg["attn_cfg"].update(num_heads=[2] * len(widths), rotary_emb_dim=[16] * len(widths))
    cfg["ssm_cfg"].update(d_state=16, chunk_size=32)
    torch.manual_seed(0)
    return HNetForCausalLM(HNetConfig.from_dict(cfg)).eval()


def varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=True, window_size=None):
    """One sequence's causal attention (the prefill of one row), as flash varlen gives it on CUDA."""
    return F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), is_causal=True)[0].transpose(0, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", required=True)
    parser.add_argument("--bytes", type=int, default=128, help="the prompt's length (default 128)")
    parser.add_argument("--ops", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    takes_varlen, varlen = attention.CausalSelfAttention._takes_varlen, attention.varlen_attn
    attention.CausalSelfAttention._takes_varlen = lambda self, x: True  # CUDA's choice for half precision
    attention.varlen_attn = varlen_stand_in
    try:
        table(args)
    finally:
        attention.CausalSelfAttention._takes_varlen, attention.varlen_attn = takes_varlen, varlen


def table(args):
    text = (Path(__file__).parents[1] / "hnet/samples/tinyshakespeare.txt").read_bytes()[: args.bytes]
    ids = torch.tensor([list(text)])
    print(f"torch {torch.__version__}; {args.bytes} bytes; counted per call\n")
    print("| config | call | torch ops | launching | Triton launches |")
    print("| --- | --- | ---: | ---: | ---: |")
    for path in args.config:
        model = tiny(path)
        calls = {"forward": lambda: model(ids), "prefill": lambda: prefill(model, model.allocate_inference_cache(1, 0), [text])}
        counted = {}
        with torch.no_grad(), force_triton():
            for name, fn in calls.items():
                counted[name] = ops, launches = count(fn)
                print(f"| {Path(path).stem} | {name} | {ops.ops} | {ops.launching} | {launches} |", flush=True)
        if args.ops:
            fwd, pre = counted["forward"][0], counted["prefill"][0]
            print(f"\n{Path(path).stem}: launching ops (prefill, forward), the prefill's most more first")
            for name in sorted(pre.by_name, key=lambda n: fwd.by_name[n] - pre.by_name[n])[: args.ops]:
                sites = ", ".join(f"{site} x{k}" for site, k in pre.sites[name].most_common(3))
                print(f"  {pre.by_name[name]:4d} {fwd.by_name[name]:4d}  {name}: {sites}")
            print()


if __name__ == "__main__":
    main()
