"""Mamba-2's fused mixer (hnet/ops/triton/mamba2.py) against its definition, the composition of the three ops
(hnet/ops/mamba2.py): forward, final state and the gradient of every input.

Without a GPU the kernels run under Triton's interpreter at small shapes in fp32; on a GPU the same cases run
compiled, in bf16 too, and HNET_REAL_SHAPES=1 adds a Mamba-2 layer of d_model 1024 at 8 x 8192 bytes and the
packed 65536 bytes of the 1-stage L step.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton's kernels are defined: before any import

pytest.importorskip("triton")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from hnet.layers.mamba2 import Mamba2  # noqa: E402
from hnet.ops import dispatch  # noqa: E402
from hnet.ops.mamba2 import mamba2_mixer  # noqa: E402
from hnet.ops.triton import mamba2 as triton_mamba2  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REAL_SHAPES = os.environ.get("HNET_REAL_SHAPES") == "1" and DEVICE == "cuda"
ON_GPU = pytest.mark.skipif(DEVICE != "cuda", reason="bf16 runs compiled on a GPU only (the interpreter's bf16 is not faithful)")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=ON_GPU)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
# dt_bias, A_log and D are one number per head, each a sum over every position of products the bf16 kernels
# round (as in tests/test_triton_kernels.py): held to this or twice the error of the reference, whichever is larger.
PER_HEAD = ("dt_bias", "A_log", "D")
REDUCED_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
NAMES = ["zxbcdt", "conv_weight", "conv_bias", "dt_bias", "A_log", "D", "norm_weight"]


def real_shapes(*cases):
    skip = pytest.mark.skipif(not REAL_SHAPES, reason="real shapes run with HNET_REAL_SHAPES=1 on a GPU only")
    return [pytest.param(c, marks=[pytest.mark.real_shapes, skip]) for c in cases]


@pytest.fixture(autouse=True)
def default_launches_at_real_shapes(request, monkeypatch):
    """Real shapes take the default launch configurations: timing every candidate compiles each first."""
    if request.node.get_closest_marker("real_shapes"):
        monkeypatch.setenv("HNET_TUNE", "0")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def mixer_inputs(b, l, nheads, headdim, d_state, K, dtype, packed, seed=0):
    """In the layer's dtypes: the projection's output in the model dtype, conv and norm weights as the model
    holds them (the same dtype), dt_bias, A_log and D float32 (D is float32 in every official model)."""
    gen = torch.Generator().manual_seed(seed)
    d_inner = nheads * headdim
    conv_dim = d_inner + 2 * d_state

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    zxbcdt = randn(b, l, 2 * d_inner + 2 * d_state + nheads)
    zxbcdt[..., -nheads:] = randn(b, l, nheads) * 2 - 1  # dt's raw projection: softplus spans its curve
    conv_weight, conv_bias = randn(conv_dim, K, scale=0.5), randn(conv_dim, scale=0.5)
    dt_bias = torch.log(torch.expm1(torch.rand(nheads, generator=gen) * 0.1 + 0.001))  # dt in [0.001, 0.1]
    A_log = torch.log(torch.rand(nheads, generator=gen) * 15 + 1)
    D, norm_weight = randn(nheads) * 0.1 + 1, randn(d_inner) * 0.1 + 1
    seq_idx = None
    if packed:  # 3 sequences per row, cut at random places; the first position of a row starts one too
        cuts = torch.sort(torch.randint(0, l, (b, 2), generator=gen), dim=1).values
        seq_idx = (torch.arange(l)[None, :, None] >= cuts[:, None, :]).sum(-1).int().to(DEVICE)
    tensors = [zxbcdt.to(dtype), conv_weight.to(dtype), conv_bias.to(dtype), dt_bias, A_log, D, norm_weight.to(dtype)]
    return [t.to(DEVICE) for t in tensors], seq_idx


def leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def run(fn, inputs, headdim, chunk, seq_idx, dy, dfinal):
    """fn's output and final state, and the gradient of <out, dy> + <final, dfinal> on every input."""
    out, final = fn(*inputs, headdim, chunk, seq_idx, return_final_state=True)
    grads = torch.autograd.grad((out, final), inputs, (dy, dfinal))
    return out, final, grads


# b, l, nheads, headdim, d_state, chunk, K, packed: lengths not a multiple of the chunk (40, 70, 33) or of any
# block, a single position, packed rows (seq_idx) with and without more chunks than sequences, and a width-3 conv.
CASES = [
    (2, 40, 2, 8, 16, 16, 4, False),
    (1, 1, 2, 8, 16, 16, 4, False),
    (2, 70, 3, 8, 8, 32, 4, True),
    (1, 33, 2, 16, 16, 16, 3, True),
] + real_shapes((8, 8192, 32, 64, 128, 256, 4, False), (1, 65536, 32, 64, 128, 256, 4, True))  # Mamba2(1024)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_mixer_equals_the_composition(case, dtype):
    b, l, nheads, headdim, d_state, chunk, K, packed = case
    inputs, seq_idx = mixer_inputs(b, l, nheads, headdim, d_state, K, dtype, packed)
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(b, l, nheads * headdim, generator=gen).to(DEVICE, dtype)
    dfinal = torch.randn(b, nheads, headdim, d_state, generator=gen).to(DEVICE)
    fused = run(triton_mamba2.mamba2_mixer, leaves(inputs), headdim, chunk, seq_idx, dy, dfinal)
    ref = run(mamba2_mixer, leaves(inputs), headdim, chunk, seq_idx, dy, dfinal)
    # The truth: the reference composition in float64 (its ops compute float64 inputs in float64).
    exact = run(mamba2_mixer, leaves([t.double() for t in inputs]), headdim, chunk, seq_idx, dy.double(), dfinal.double())
    assert fused[0].dtype == dtype and fused[1].dtype == torch.float32
    assert rel(fused[0], ref[0]) < TOL[dtype] and rel(fused[1], ref[1]) < TOL[dtype]
    for name, g_fused, g_ref, g_true, t in zip(NAMES, fused[2], ref[2], exact[2], inputs):
        assert g_fused.dtype == t.dtype and g_fused.shape == t.shape, name
        # Zero in exact arithmetic (A_log's at one position): float64 leaves rounding noise (~1e-17 on a GPU),
        # against which a relative error means nothing.
        if g_true.norm() < 1e-10:
            assert g_fused.abs().max() < TOL[dtype], f"d{name}: {g_fused.abs().max():.2e} where it is 0"
            continue
        err, ref_err = rel(g_fused, g_true), rel(g_ref, g_true)
        bound = max(REDUCED_TOL[dtype], 2 * ref_err) if name in PER_HEAD else TOL[dtype]
        assert err < bound, f"d{name}: rel err vs float64 {err:.2e} (the reference in the same dtype {ref_err:.2e})"


@pytest.mark.parametrize("recompute_conv", [True, False], ids=["conv recomputed", "conv kept"])
def test_fused_mixer_equals_the_unfused_kernels(recompute_conv):
    """The same kernels op by op (the dispatcher's unfused path): the fused Function differs only in where it
    reads and writes, in taking the softplus inside the scan, and in the order of dt_bias's sum."""
    inputs, seq_idx = mixer_inputs(2, 70, 3, 8, 8, 4, torch.float32, packed=True)
    gen = torch.Generator().manual_seed(1)
    dy, dfinal = torch.randn(2, 70, 24, generator=gen).to(DEVICE), torch.randn(2, 3, 8, 8, generator=gen).to(DEVICE)

    def fused(*args, **kw):
        return triton_mamba2.mamba2_mixer(*args, **kw, recompute_conv=recompute_conv)

    with dispatch.kernel_path("unfused"):
        unfused = run(dispatch.mamba2_mixer, leaves(inputs), 8, 32, seq_idx, dy, dfinal)
    with dispatch.kernel_path("fast"):
        fused = run(fused, leaves(inputs), 8, 32, seq_idx, dy, dfinal)
    for name, a, b in zip(["out", "final_state", *NAMES], [fused[0], fused[1], *fused[2]],
                          [unfused[0], unfused[1], *unfused[2]]):
        assert rel(a, b) < (1e-5 if name in PER_HEAD else 1e-6), f"{name}: {rel(a, b):.2e}"


def test_fused_mixer_recomputes_the_scan_states_bit_for_bit():
    """The backward recomputes the scan's entering states and C.B with the forward's kernels on the same inputs
    (packed rows, 70 positions in chunks of 16): output and every gradient equal, bit for bit, those of the
    mixer that keeps them."""
    inputs, seq_idx = mixer_inputs(2, 70, 3, 8, 8, 4, torch.float32, packed=True)
    gen = torch.Generator().manual_seed(1)
    dy, dfinal = torch.randn(2, 70, 24, generator=gen).to(DEVICE), torch.randn(2, 3, 8, 8, generator=gen).to(DEVICE)
    recomputed, kept = (run(lambda *a, **kw: triton_mamba2.mamba2_mixer(*a, **kw, recompute_states=r), leaves(inputs),
                            8, 16, seq_idx, dy, dfinal) for r in (True, False))
    for name, a, b in zip(["out", "final_state", *NAMES], [recomputed[0], recomputed[1], *recomputed[2]],
                          [kept[0], kept[1], *kept[2]]):
        assert torch.equal(a, b), f"{name}: {rel(a, b):.2e}"


def test_fused_mixer_keeps_no_scan_states():
    """By default nothing saved for the backward has the shape of the scan's entering states (b, chunks, h, p, n)
    or of its C.B (b, chunks, groups, Q, Q): the saved bytes are theirs fewer than with recompute_states=False."""
    b, l, h, p, n, Q = 2, 70, 3, 8, 8, 16
    inputs, seq_idx = mixer_inputs(b, l, h, p, n, 4, torch.float32, packed=True)

    def saved_for_backward(recompute_states):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            triton_mamba2.mamba2_mixer(*leaves(inputs), p, Q, seq_idx, recompute_states=recompute_states)
        return saved

    chunks = -(-l // Q)
    states_in, cb = torch.Size([b, chunks, h, p, n]), torch.Size([b, chunks, 1, Q, Q])
    recomputed, kept = saved_for_backward(True), saved_for_backward(False)
    assert {states_in, cb} <= {t.shape for t in kept}
    assert not {states_in, cb} & {t.shape for t in recomputed}
    nbytes = sum(t.numel() * t.element_size() for t in kept) - sum(t.numel() * t.element_size() for t in recomputed)
    assert nbytes == (states_in.numel() + cb.numel()) * 4


@pytest.mark.parametrize("path", ["fast", "unfused"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixer_applies_out_proj_without_keeping_its_input(dtype, path):
    """Given out_proj's weight, the mixer's output is out_proj's (the fused Function's, or unfused the gated
    norm's): equal to F.linear after the mixer, output and every gradient (the weight's too, from the norm's
    output recomputed in the backward), while what it saves is the mixer's and the weight, without the
    (b, l, d_inner) input that F.linear after would keep."""
    inputs, seq_idx = mixer_inputs(2, 70, 3, 8, 8, 4, dtype, packed=True)
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(5, 24, generator=gen) / 5).to(DEVICE, dtype)
    dy, dfinal = torch.randn(2, 70, 5, generator=gen).to(DEVICE, dtype), torch.randn(2, 3, 8, 8, generator=gen).to(DEVICE)

    def inside(*args, weight, **kw):
        return dispatch.mamba2_mixer(*args, **kw, out_proj_weight=weight)

    def after(*args, weight, **kw):
        out, final = dispatch.mamba2_mixer(*args, **kw)
        return torch.nn.functional.linear(out, weight), final

    def alone(*args, weight, **kw):
        return dispatch.mamba2_mixer(*args, **kw)

    def saved_bytes(fn):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*leaves(inputs), 8, 16, seq_idx, return_final_state=True, weight=weight.clone().requires_grad_())
        return sum(t.numel() * t.element_size() for t in saved)

    results = []
    with dispatch.kernel_path(path):
        for fn in (inside, after):
            *tensors, w = leaves([*inputs, weight])
            out, final = fn(*tensors, 8, 16, seq_idx, return_final_state=True, weight=w)
            results.append((out, final, torch.autograd.grad((out, final), [*tensors, w], (dy, dfinal))))
        saved = {fn.__name__: saved_bytes(fn) for fn in (inside, after, alone)}
    (out, final, grads), (out_ref, final_ref, grads_ref) = results
    assert out.shape == (2, 70, 5) and out.dtype == dtype and torch.equal(final, final_ref)
    assert rel(out, out_ref) < TOL[dtype] / 100
    for name, g, g_ref in zip([*NAMES, "out_proj_weight"], grads, grads_ref):
        assert rel(g, g_ref) < TOL[dtype] / 10, f"d{name}: {rel(g, g_ref):.2e}"
    normed = 2 * 70 * 24 * inputs[0].element_size()
    assert saved["inside"] == saved["alone"] + weight.numel() * weight.element_size()
    assert saved["after"] == saved["alone"] + weight.numel() * weight.element_size() + normed


def nth_layout(pick: int, counts: dict, names: set):
    """A stand-in for launch_fastest: the pick-th distinct launch layout of the launchers named (warps and
    stages aside, which change scheduling, not results), the default of the others; counts their layouts."""
    def launch_fastest(name, key, positions, candidates, launch):
        if name not in names:
            return launch(**candidates[0])
        layouts = [{k: v for k, v in c.items() if k not in ("num_warps", "num_stages")} for c in candidates]
        distinct = [c for i, c in enumerate(layouts) if c not in layouts[:i]]
        counts[name] = len(distinct)
        return launch(**distinct[pick % len(distinct)])
    return launch_fastest


def test_fused_mixer_under_every_output_layout(monkeypatch):
    """The launchers that write into the fused Function's gradient buffers, under every layout the tuner may
    pick: dx, and dB and dC straight from one run of heads or summed from several runs (4 heads in one group,
    chunks of 128; every other layout is covered by test_triton_kernels.py::test_every_launch_candidate)."""
    import importlib

    counts, names = {}, {"chunk_scan_bwd_dx", "chunk_scan_bwd_dc", "chunk_state_bwd_db"}
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    inputs, seq_idx = mixer_inputs(1, 130, 4, 8, 16, 4, dtype, packed=True)
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(1, 130, 32, generator=gen).to(DEVICE, dtype)
    dfinal = torch.randn(1, 4, 8, 16, generator=gen).to(DEVICE)
    ref = run(mamba2_mixer, leaves(inputs), 8, 128, seq_idx, dy, dfinal)
    pick = 0
    while pick == 0 or pick < max(counts.values()):
        for module in ("ssd.chunk_scan", "ssd.chunk_state"):
            monkeypatch.setattr(importlib.import_module(f"hnet.ops.triton.{module}"), "launch_fastest",
                                nth_layout(pick, counts, names))
        fused = run(triton_mamba2.mamba2_mixer, leaves(inputs), 8, 128, seq_idx, dy, dfinal)
        for name, a, b in zip(["out", "final_state", *NAMES], [fused[0], fused[1], *fused[2]], [ref[0], ref[1], *ref[2]]):
            tol = REDUCED_TOL[dtype] if name in PER_HEAD else TOL[dtype]
            assert rel(a, b) < tol, f"layout {pick}, {name}: {rel(a, b):.2e}"
        pick += 1
    assert set(counts) == names and min(counts.values()) > 1


@pytest.mark.parametrize("K", [4, 2, 3, 5])
def test_conv_backward_into_a_strided_slice(monkeypatch, K):
    """Every conv backward variant reads dout and writes dx through row strides (the fused mixer's gradient
    buffer), leaving the rest of the buffer alone; for every kernel width (the variants that unroll 4 taps
    are not offered past 4)."""
    from hnet.ops.conv1d import causal_conv1d
    from hnet.ops.triton import conv1d as triton_conv1d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20, 20, generator=gen).to(DEVICE)[..., 3:19]  # a slice of a wider tensor, as xBC is
    w, bias = torch.randn(16, K, generator=gen).to(DEVICE), torch.randn(16, generator=gen).to(DEVICE)
    seq_idx = torch.cat([torch.zeros(2, 8), torch.ones(2, 2), 2 + torch.zeros(2, 10)], 1).int().to(DEVICE)
    dout = torch.randn(2, 20, 19, generator=gen).to(DEVICE)[..., :16]
    ref = leaves([x, w, bias])
    expected = torch.autograd.grad(causal_conv1d(*ref, seq_idx=seq_idx), ref, dout)
    counts, pick = {}, 0
    while pick == 0 or pick < counts["conv1d_bwd"]:
        monkeypatch.setattr(triton_conv1d, "launch_fastest", nth_layout(pick, counts, {"conv1d_bwd"}))
        into = torch.full((2, 20, 30), float("nan"), device=DEVICE)
        got = triton_conv1d.conv1d_backward(dout, x, w, bias, seq_idx, dx=into[..., 10:26])
        assert got[0].data_ptr() == into[..., 10:26].data_ptr()
        assert into[..., :10].isnan().all() and into[..., 26:].isnan().all()
        for name, a, b in zip(["x", "weight", "bias"], got, expected):
            assert rel(a, b) < 1e-5, f"layout {pick}, d{name}: {rel(a, b):.2e}"
        pick += 1


class _AtenCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_fused_mixer_has_no_concatenation_and_no_fill():
    """Forward and backward allocate and launch kernels; torch itself only sums partial sums and casts the
    per-head gradients: no split copies, no concatenated gradient, no zero fill."""
    inputs, seq_idx = mixer_inputs(2, 40, 2, 8, 16, 4, torch.float32, packed=True)
    inputs = leaves(inputs)
    calls = _AtenCalls()
    with calls:
        out = triton_mamba2.mamba2_mixer(*inputs, 8, 16, seq_idx)
        out.backward(torch.ones_like(out))
    glue = {"cat", "stack", "split_with_sizes_backward", "zeros", "zero_", "fill_", "new_zeros", "zeros_like", "clone",
            "contiguous", "softplus", "softplus_backward"}
    assert not glue & set(calls.names), sorted(glue & set(calls.names))


def test_layer_takes_the_fused_mixer_where_the_kernels_run(monkeypatch):
    """The Mamba-2 layer goes through the dispatcher: fused on the fast path, its op-by-op composition with
    HNET_FUSED_MAMBA2=0 or on the reference path (CPU tensors: the reference, as always)."""
    calls = []
    real = triton_mamba2.mamba2_mixer
    monkeypatch.setattr(triton_mamba2, "mamba2_mixer", lambda *a, **k: calls.append(k["recompute_conv"]) or real(*a, **k))
    torch.manual_seed(0)
    layer = Mamba2(16, d_state=8, headdim=8, chunk_size=16, device=DEVICE)
    u = torch.randn(2, 20, 16, device=DEVICE)
    outs = {}
    for path in ("fast", "unfused", "reference"):
        with dispatch.kernel_path(path):
            outs[path] = layer(u)
    assert calls == [True]
    layer.recompute_conv = False
    with dispatch.kernel_path("fast"):
        layer(u)
    assert calls == [True, False]
    monkeypatch.setenv("HNET_FUSED_MAMBA2", "0")
    with dispatch.force_triton():
        layer(u)
    assert len(calls) == 2
    assert rel(outs["fast"], outs["reference"]) < 1e-5 and rel(outs["unfused"], outs["reference"]) < 1e-5
