"""Triton kernels vs their PyTorch references (eager and torch.compile): time, error, and % of the ceilings.

    python benchmarks/kernels.py                                      # real shapes, CUDA (an H100)
    python benchmarks/kernels.py --no-compile --ops ssd_chunked       # the SSD rows, mamba_ssm, the mixer, the layer
    TRITON_INTERPRET=1 python benchmarks/kernels.py --quick --device cpu   # tiny shapes: checks the code path

For each op, forward and forward+backward: median ms (triton.testing.do_bench, after warmup; a plain
wall clock on CPU), relative error ||out - truth|| / ||truth|| against a float64 computation (for
forward+backward the largest over the input gradients, named), and the achieved GB/s (bytes the op
must read and write, a lower bound on its traffic) or TFLOP/s (the SSD's model FLOPs; its least
traffic's GB/s too), as a fraction of ceilings measured in this run: a large device-to-device copy and
a bf16 8192^3 matmul. Shapes are those of a Mamba-2 layer of d_model 1024 (d_inner 2048, 24 heads of 64,
d_state 128, chunk 256) at batch 8 x 8192, the dechunk EMA over ~1400 chunks of width 1536, and SwiGLU and
the rotary embedding at the main network of hnet_1stage_L (21504 chunks, d 1536, 16 heads). Then
Mamba-2's mixer alone (fused, fused keeping the conv's output, op by op), a whole Mamba-2 layer
forward+backward (mixer fused, unfused, the reference), and mamba_ssm's scan where importable.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from hnet.eval.timing import bench, ceilings, peak_gib, print_tuning
from hnet.ops import conv1d, ema, norm, rotary, ssd, swiglu
from hnet.ops.dispatch import kernel_path
from hnet.ops.triton import conv1d as triton_conv1d
from hnet.ops.triton import ema as triton_ema
from hnet.ops.triton import rotary as triton_rotary
from hnet.ops.triton import swiglu as triton_swiglu
from hnet.ops.triton import norm as triton_norm
from hnet.ops.triton import ssd as triton_ssd

import triton  # noqa: E402  (after hnet.ops.triton, which needs it anyway)


def shapes(quick: bool) -> dict:
    if quick:
        return {"b": 2, "l": 64, "h": 4, "p": 16, "n": 16, "chunk": 16, "d_model": 32, "m": 40, "d_ema": 48,
                "t": 50, "heads": 2, "head_dim": 12, "rot": 8, "hidden": 40}
    # t, heads, head_dim, rot, hidden: the main network of hnet_1stage_L over 8 x 8192 bytes (~3 bytes a chunk).
    return {"b": 8, "l": 8192, "h": 24, "p": 64, "n": 128, "chunk": 256, "d_model": 1024, "m": 1400, "d_ema": 1536,
            "t": 21504, "heads": 16, "head_dim": 96, "rot": 48, "hidden": 4096}


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def fwd_bwd(fn, inputs):
    """A callable running fn forward then backward with a fixed random output gradient."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    grads = [torch.randn_like(o) for o in outs]

    def run():
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.grad is not None:
                t.grad = None
        res = fn(*inputs)
        torch.autograd.backward(res if isinstance(res, tuple) else (res,), grads)

    return run


def compiled(fn, device):
    if device.type != "cuda":
        return None  # torch.compile on CPU is a C++ toolchain question, not this benchmark's
    return torch.compile(fn)


def ms_or_error(fn, device) -> float | str:
    try:
        return bench(fn, device)
    except Exception as exc:  # a reference that does not compile is a row, not the end of the run
        return f"failed: {type(exc).__name__}"


def errors_vs_float64(truth, inputs, fns) -> list[tuple[float, list[float]]]:
    """For each fn: the relative error of its output, and of each input's gradient (the inputs that require
    one, in order) for one fixed random output gradient, against truth on float64 copies of the inputs
    (computed once for all fns)."""
    exact = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    true_out = truth(*exact)
    dy = torch.randn(true_out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dy = dy.to(true_out.device)
    true_grads = torch.autograd.grad(true_out, [t for t in exact if t.requires_grad], dy)
    true_out = true_out.detach()
    wanted = [t for t in inputs if t.requires_grad]
    results = []
    for fn in fns:
        out = fn(*inputs)
        grads = torch.autograd.grad(out, wanted, dy.to(out.dtype))
        results.append((rel(out.detach(), true_out), [rel(g, t) for g, t in zip(grads, true_grads)]))
    return results


# ---- the ops: (name, triton fn, reference fn, inputs, float64 truth of the inputs, bytes or flops) ------------

def op_cases(s: dict, device, dtype):
    b, l, h, p, n, Q = s["b"], s["l"], s["h"], s["p"], s["n"], s["chunk"]
    d_inner, conv_dim = h * p, h * p + 2 * n
    size = torch.finfo(dtype).bits // 8

    def leaf(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, device=device) * scale).to(dt).requires_grad_()

    cases = []
    x, z, w = leaf(b, l, d_inner), leaf(b, l, d_inner), leaf(d_inner)

    def norm_truth(x, z, w):
        g = x * F.silu(z)
        return g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    cases.append(("gated_rms_norm", triton_norm.gated_rms_norm, norm.gated_rms_norm, (x, z, w), norm_truth,
                  ("GB/s", (2 * size + 4) * x.numel())))

    xc, wc, bc = leaf(b, l, conv_dim), leaf(conv_dim, 4), leaf(conv_dim)
    cases.append(("causal_conv1d", triton_conv1d.causal_conv1d, conv1d.causal_conv1d, (xc, wc, bc),
                  conv1d.causal_conv1d, ("GB/s", 2 * size * xc.numel())))

    u = leaf(s["t"], 2 * s["hidden"], scale=3.0)
    cases.append(("swiglu", triton_swiglu.swiglu, swiglu.swiglu, (u,), swiglu.swiglu, ("GB/s", 3 * size * u.numel() // 2)))

    qkv = leaf(s["t"], 3, s["heads"], s["head_dim"])
    cos, sin = rotary.rotary_tables(torch.arange(s["t"], device=device) % 8192, s["rot"])

    def stacked(impl):  # one output for the errors and the backward: both rows' times include the stack's copy
        return lambda qkv_: torch.stack(impl(qkv_, cos, sin))

    cases.append(("rotary_qkv", stacked(triton_rotary.rotary_qkv), stacked(rotary.rotary_qkv), (qkv,),
                  stacked(rotary.rotary_qkv), ("GB/s", 2 * size * qkv.numel())))

    xe = leaf(b, s["m"], s["d_ema"], dt=torch.float32)
    pe = torch.rand(b, s["m"], device=device).clamp(1e-4, 1 - 1e-4).requires_grad_()

    def ema_truth(xe, pe):
        e, out = torch.zeros_like(xe[:, 0]), []
        for t in range(xe.shape[1]):
            e = pe[:, t, None] * xe[:, t] + (1 - pe[:, t, None]) * e
            out.append(e)
        return torch.stack(out, 1)

    cases.append(("ema_scan (fp32)", triton_ema.ema_scan, ema.ema_scan, (xe, pe), ema_truth, ("GB/s", 8 * xe.numel())))

    xs, Bs, Cs = leaf(b, l, h, p), leaf(b, l, 1, n), leaf(b, l, 1, n, scale=n**-0.5)
    dts = F.softplus(torch.randn(b, l, h, device=device) - 3).requires_grad_()
    As = (-torch.rand(h, device=device) * 8 - 1).requires_grad_()
    Ds = torch.ones(h, device=device, requires_grad=True)
    flops = 2 * b * l * h * (Q * p / 2 + 2 * p * n) + b * l * Q * n  # intra-chunk, states, C.B (causal halves)
    traffic = (2 * size * h * p + 4 * h + 2 * size * n) * b * l  # x and y, dt, B and C: the least it must move

    def ssd_fn(impl):
        return lambda x_, dt_, A_, B_, C_, D_: impl(x_, dt_, A_, B_, C_, Q, D_)

    # The truth: the chunked reference, which computes float64 inputs in float64 (the step-by-step recurrence
    # would keep every step's state for its backward).
    cases.append(("ssd_chunked", ssd_fn(triton_ssd.ssd_chunked), ssd_fn(ssd.ssd_chunked), (xs, dts, As, Bs, Cs, Ds),
                  ssd_fn(ssd.ssd_chunked), ("TFLOP/s", flops, traffic)))
    return cases


GRAD_NAMES = {"gated_rms_norm": ("dx", "dz", "dw"), "causal_conv1d": ("dx", "dweight", "dbias"),
              "ema_scan": ("dx", "dp"), "swiglu": ("du",), "rotary_qkv": ("dqkv",), "ssd_chunked": ("dx", "ddt", "dA", "dB", "dC", "dD")}


def mamba_ssm_case(s, device, dtype):
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    b, l, h, p, n, Q = s["b"], s["l"], s["h"], s["p"], s["n"], s["chunk"]
    inputs = (torch.randn(b, l, h, p, device=device, dtype=dtype).requires_grad_(),
              F.softplus(torch.randn(b, l, h, device=device) - 3).requires_grad_(),
              (-torch.rand(h, device=device) * 8 - 1).requires_grad_(),
              torch.randn(b, l, 1, n, device=device, dtype=dtype).requires_grad_(),
              torch.randn(b, l, 1, n, device=device, dtype=dtype).requires_grad_(),
              torch.ones(h, device=device, requires_grad=True))
    return lambda *t: mamba_chunk_scan_combined(*t[:5], Q, D=t[5]), inputs


def fmt(v) -> str:
    return v if isinstance(v, str) else f"{v:9.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: check that everything runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) rows")
    parser.add_argument("--ops", nargs="+", metavar="OP", help="only these ops' rows (gated_rms_norm, "
                        "causal_conv1d, swiglu, rotary_qkv, ema_scan, ssd_chunked); mamba_ssm and the layer rows always run")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter's bf16 is not faithful
    s = shapes(args.quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"device {name} | torch {torch.__version__} | triton {triton.__version__} | inputs {dtype}")
    print(f"shapes {s}")
    gbps, tflops = ceilings(device)
    print(f"ceilings: copy {gbps:.0f} GB/s, bf16 matmul {tflops:.0f} TFLOP/s\n")

    header = f"{'op':<22}{'pass':<9}{'impl':<10}{'ms':>10}{'rel err':>16}{'rate':>18}{'% ceil':>8}"
    print(header + "\n" + "-" * len(header))
    for op, fast, ref, inputs, truth, (unit, amount, *traffic) in op_cases(s, device, dtype):
        if args.ops and op.split()[0] not in args.ops:
            continue
        errors, worst = {}, {}
        for impl, (out_err, grad_errs) in zip(("triton", "eager"), errors_vs_float64(truth, inputs, (fast, ref))):
            name, err = max(zip(GRAD_NAMES[op.split()[0]], grad_errs), key=lambda ne: ne[1])
            errors[impl], worst[impl] = out_err, f"{name} {err:.1e}"
        impls = {"triton": fast, "eager": ref}
        if not args.no_compile and (c := compiled(ref, device)) is not None:
            impls["compile"] = c
        for pass_name in ("fwd", "fwd+bwd"):
            for impl, fn in impls.items():
                run = (lambda fn=fn: fn(*inputs)) if pass_name == "fwd" else None
                try:
                    run = run or fwd_bwd(fn, inputs)
                    ms = ms_or_error(run, device)
                except Exception as exc:
                    ms = f"failed: {type(exc).__name__}"
                rate, ceil = "", ""
                if not isinstance(ms, str):
                    scale = 1 if pass_name == "fwd" else 3  # backward ~ 2x forward's traffic and FLOPs
                    value = scale * amount / ms / (1e6 if unit == "GB/s" else 1e9)
                    rate = f"{value:10.1f} {unit}"
                    ceil = f"{100 * value / (gbps if unit == 'GB/s' else tflops):7.1f}%"
                    if traffic:  # a FLOP-rated op: its least traffic against the copy ceiling too
                        moved = scale * traffic[0] / ms / 1e6
                        ceil += f"   {moved:.0f} GB/s, {100 * moved / gbps:.1f}% of copy"
                err = ""
                if impl in errors:  # the forward's error, or the worst gradient's
                    err = f"{errors[impl]:16.2e}" if pass_name == "fwd" else worst[impl]
                print(f"{op:<22}{pass_name:<9}{impl:<10}{fmt(ms):>10}{err:>16}{rate:>18}{ceil:>8}")

    mamba = mamba_ssm_case(s, device, dtype) if device.type == "cuda" else None
    if mamba is None:
        print("\nmamba_ssm: absent (not importable here)")
    else:
        fn, inputs = mamba
        print(f"\nmamba_ssm mamba_chunk_scan_combined: fwd {fmt(bench(lambda: fn(*inputs), device))} ms, "
              f"fwd+bwd {fmt(bench(fwd_bwd(fn, inputs), device))} ms")

    mixer_rows(s, device, dtype, gbps)
    from hnet.layers.mamba2 import Mamba2
    layer = Mamba2(s["d_model"], d_state=s["n"], chunk_size=s["chunk"], headdim=s["p"], device=device, dtype=dtype)
    u = torch.randn(s["b"], s["l"], s["d_model"], device=device, dtype=dtype, requires_grad=True)
    run = fwd_bwd(layer, (u,))
    print(f"\nMamba2({s['d_model']}) forward+backward at {s['b']} x {s['l']}:")
    for label, path in (("fast path (mixer fused)", "fast"), ("mixer unfused", "unfused"), ("reference", "reference")):
        with kernel_path(path):
            print(f"  {label:<24} {fmt(bench(run, device))} ms")
    print_tuning()


def mixer_rows(s: dict, device, dtype, gbps: float) -> None:
    """Mamba-2's mixer alone (in_proj's output -> out_proj's input), fused (the conv's output recomputed in
    the backward, or kept) against the same kernels op by op, forward and forward+backward, with the errors of
    each against float64 and the peak memory of forward+backward; the rate is against the mixer's least
    traffic (`hnet.eval.floor.mamba2_mixer_bytes`, 16-bit activations)."""
    from hnet.eval.floor import mamba2_mixer_bytes
    from hnet.ops import dispatch
    from hnet.ops import mamba2 as mamba2_ref
    from hnet.ops.triton import mamba2 as triton_mamba2

    b, l, p, n, Q = s["b"], s["l"], s["p"], s["n"], s["chunk"]
    d_inner = 2 * s["d_model"]  # the Mamba2(d_model) layer's own width (expand 2), not the SSD rows' heads
    h, conv_dim = d_inner // p, d_inner + 2 * n

    def leaf(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, device=device) * scale).to(dt).requires_grad_()

    inputs = (leaf(b, l, 2 * d_inner + 2 * n + h), leaf(conv_dim, 4, scale=0.5), leaf(conv_dim, scale=0.5),
              (torch.rand(h, device=device) * 4 - 6).requires_grad_(), torch.log(torch.rand(h, device=device) * 15 + 1).requires_grad_(),
              torch.ones(h, device=device, requires_grad=True), leaf(d_inner, scale=0.1))
    with torch.no_grad():
        inputs[-1].add_(1)
    impls = {
        "fused": lambda *t: triton_mamba2.mamba2_mixer(*t, p, Q),
        "fused, conv kept": lambda *t: triton_mamba2.mamba2_mixer(*t, p, Q, recompute_conv=False),
        "fused, states kept": lambda *t: triton_mamba2.mamba2_mixer(*t, p, Q, recompute_states=False),
        "unfused": lambda *t: dispatch.mamba2_mixer(*t, p, Q),
    }
    names = ("dzxbcdt", "dconv_w", "dconv_b", "ddt_bias", "dA_log", "dD", "dnorm_w")
    traffic = mamba2_mixer_bytes(d_inner, n, h) * b * l
    print(f"\nMamba-2 mixer alone (d_inner {d_inner}, state {n}, chunk {Q}) at {b} x {l}; least traffic "
          f"fwd+bwd {traffic / 1e9:.2f} GB:")
    with kernel_path("unfused"):  # the unfused row's ops take their kernels; the fused ones are called directly
        errors = errors_vs_float64(lambda *t: mamba2_ref.mamba2_mixer(*t, p, Q), inputs, list(impls.values()))
        for (label, fn), (out_err, grad_errs) in zip(impls.items(), errors):
            fwd = bench(lambda: fn(*inputs), device)
            both = fwd_bwd(fn, inputs)
            if device.type == "cuda":
                both()  # compiled and tuned before its memory is measured
            peak = peak_gib(both, device)
            ms = bench(both, device)
            worst = max(zip(names, grad_errs), key=lambda ne: ne[1])
            print(f"  {label:<18} fwd {fmt(fwd)} ms   fwd+bwd {fmt(ms)} ms ({traffic / ms / 1e6:.0f} GB/s, "
                  f"{100 * traffic / ms / 1e6 / gbps:.1f}% of copy)   peak +{peak:.2f} GiB   rel err out "
                  f"{out_err:.1e}, worst {worst[0]} {worst[1]:.1e}")


if __name__ == "__main__":
    main()
