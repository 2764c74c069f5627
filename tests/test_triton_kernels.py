"""Each Triton kernel of hnet/ops/triton against the PyTorch reference it must equal, forward and backward.

Without a GPU the kernels run under Triton's interpreter at small shapes (fp32 only: the interpreter's
bf16 dots and casts are not faithful). On a GPU the same tests run compiled, in bf16 too, and
HNET_REAL_SHAPES=1 also runs the shapes of a Mamba-2 layer of d_model 1024 at batch 8 x 8192. Cases that do
not run here are collected and skipped with the reason.
"""

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton's kernels are defined: before any import

triton = pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from hnet.ops import dispatch  # noqa: E402
from hnet.ops.conv1d import causal_conv1d  # noqa: E402
from hnet.ops.cosine import rowwise_cosine  # noqa: E402
from hnet.ops.ema import ema_scan  # noqa: E402
from hnet.ops.norm import add_rms_norm, gated_rms_norm  # noqa: E402
from hnet.ops.rotary import rotary_qkv, rotary_qkv_into, rotary_tables  # noqa: E402
from hnet.ops.ssd import ssd_chunked, ssd_sequential  # noqa: E402
from hnet.ops.swiglu import swiglu  # noqa: E402
from hnet.ops.triton import conv1d as triton_conv1d  # noqa: E402
from hnet.ops.triton import cosine as triton_cosine  # noqa: E402
from hnet.ops.triton import ema as triton_ema  # noqa: E402
from hnet.ops.triton import norm as triton_norm  # noqa: E402
from hnet.ops.triton import rotary as triton_rotary  # noqa: E402
from hnet.ops.triton import swiglu as triton_swiglu  # noqa: E402
from hnet.ops.triton import ssd as triton_ssd  # noqa: E402
from hnet.ops.triton.ssd.chunk_cumsum import chunk_cumsum, chunk_cumsum_bwd  # noqa: E402
from hnet.ops.triton.ssd.chunk_scan import chunk_scan_bwd_dc, chunk_scan_bwd_dcb, chunk_scan_bwd_dx  # noqa: E402
from hnet.ops.triton.ssd.chunk_state import (  # noqa: E402
    chunk_cb,
    chunk_state,
    chunk_state_bwd_db,
    state_grad_from_output,
)
from hnet.ops.triton.ssd.state_passing import state_passing, state_passing_bwd  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REAL_SHAPES = os.environ.get("HNET_REAL_SHAPES") == "1" and DEVICE == "cuda"
# GPU-only cases are collected everywhere and skipped with the reason, so a CPU run's count says what it left out.
ON_GPU = pytest.mark.skipif(DEVICE != "cuda", reason="bf16 runs compiled on a GPU only (the interpreter's bf16 is not faithful)")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=ON_GPU)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
# dA and dD are one number per head, each a sum over every (batch, position, channel) of products that the
# bf16 kernels round: cancellation in those sums leaves a larger relative error than elementwise outputs, so
# they are held to this or to twice the error of the reference in the same dtype, whichever is larger.
REDUCED_GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def real_shapes(*cases):
    """Cases at the shapes of the L models, only with HNET_REAL_SHAPES=1 on a GPU; marked, so that
    `pytest -m real_shapes` runs them alone (compiling every small case first takes minutes)."""
    skip = pytest.mark.skipif(not REAL_SHAPES, reason="real shapes run with HNET_REAL_SHAPES=1 on a GPU only")
    return [pytest.param(c, marks=[pytest.mark.real_shapes, skip]) for c in cases]


@pytest.fixture(autouse=True)
def default_launches_at_real_shapes(request, monkeypatch):
    """Real-shape cases run the default launch configurations: timing every candidate compiles each first
    (1-20 s apiece on the H200, minutes per case); test_every_launch_candidate runs every layout."""
    if request.node.get_closest_marker("real_shapes"):
        monkeypatch.setenv("HNET_TUNE", "0")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def packed_seq_idx(b, l, n_seqs, generator=None):
    """(b, l) int32, non-decreasing: n_seqs packed sequences of random lengths per row."""
    cuts = torch.sort(torch.randint(0, l, (b, n_seqs - 1), generator=generator), dim=1).values
    return (torch.arange(l)[None, :, None] >= cuts[:, None, :]).sum(-1).int().to(DEVICE)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]


def check_grads(out_fast, ins_fast, out_ref, ins_ref, tol, names):
    dy = torch.randn_like(out_ref.float()).to(out_ref.dtype)
    g_fast = torch.autograd.grad(out_fast, [t for t in ins_fast if t is not None], dy)
    g_ref = torch.autograd.grad(out_ref, [t for t in ins_ref if t is not None], dy)
    for name, a, b in zip([n for n, t in zip(names, ins_ref) if t is not None], g_fast, g_ref):
        assert rel(a, b) < tol, f"d{name}: rel err {rel(a, b):.2e}"


def test_host_arithmetic_equals_tritons():
    """The launchers' cdiv and next_power_of_2 (plain Python, for their host cost) equal Triton's own."""
    from hnet.ops.triton.host import cdiv, next_power_of_2

    assert [next_power_of_2(n) for n in range(5000)] == [triton.next_power_of_2(n) for n in range(5000)]
    assert all(cdiv(a, b) == triton.cdiv(a, b) for a in range(300) for b in range(1, 40))


# ---- the Transformer's SwiGLU and rotary embeddings ----------------------------------------------------

# The last dim holds [value, gate]: 1100 hidden channels need two blocks of 1024, the last one partial.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (3, 5, 40), (2, 33, 2200)] + real_shapes((21504, 8192)), ids=str)
def test_swiglu(shape, dtype):
    torch.manual_seed(0)
    u = torch.randn(shape, device=DEVICE, dtype=dtype) * 3
    fast, ref = leaves(u), leaves(u)
    y_fast, y_ref = triton_swiglu.swiglu(*fast), swiglu(*ref)
    assert y_fast.shape == y_ref.shape and y_fast.dtype == y_ref.dtype
    assert rel(y_fast, y_ref) < TOL[dtype]
    check_grads(y_fast, fast, y_ref, ref, TOL[dtype], "u")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5, 40), (2, 33, 200)], ids=str)
def test_swiglu_mlp_keeps_only_its_input(shape, dtype):
    """fc2(swiglu(fc1(x))) as one Function: the reference composition's output and gradients (x and both
    weights), with only x and the weights saved for the backward (fc1's output and the activation are
    recomputed there)."""
    torch.manual_seed(0)
    hidden = 2 * shape[-1] + 6
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    w1 = torch.randn(2 * hidden, shape[-1], device=DEVICE, dtype=dtype) / shape[-1] ** 0.5
    w2 = torch.randn(7, hidden, device=DEVICE, dtype=dtype) / hidden ** 0.5
    fast, ref = leaves(x, w1, w2), leaves(x, w1, w2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y_fast = triton_swiglu.swiglu_mlp(*fast)
    assert [t.shape for t in saved] == [x.shape, w1.shape, w2.shape]
    y_ref = F.linear(swiglu(F.linear(ref[0], ref[1])), ref[2])
    assert y_fast.shape == y_ref.shape and y_fast.dtype == dtype
    assert rel(y_fast, y_ref) < TOL[dtype]
    check_grads(y_fast, fast, y_ref, ref, TOL[dtype], ["x", "fc1 weight", "fc2 weight"])


ROTARY_CASES = [(1, 1, 8, 8), (37, 3, 12, 8), (50, 16, 96, 48), (70, 5, 20, 4)] + real_shapes((21504, 16, 96, 48))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ROTARY_CASES, ids=str)  # positions, heads, head dim, rotary dim
def test_rotary_qkv(case, dtype):
    T, H, hd, rot = case
    torch.manual_seed(0)
    qkv = torch.randn(T, 3 * H * hd, device=DEVICE, dtype=dtype).view(T, 3, H, hd)  # as Wqkv's output is seen
    cos, sin = rotary_tables(torch.randint(0, 3000, (T,), device=DEVICE), rot)
    fast, ref = leaves(qkv), leaves(qkv)
    q, k, v = triton_rotary.rotary_qkv(fast[0], cos, sin)
    assert v.data_ptr() == fast[0][:, 2].data_ptr() and v.stride() == fast[0][:, 2].stride()  # v: a view, not copied
    out_fast = torch.stack((q, k, v))
    out_ref = torch.stack(rotary_qkv(ref[0], cos, sin))
    assert out_fast.shape == out_ref.shape == (3, T, H, hd) and out_fast.dtype == dtype
    assert rel(out_fast, out_ref) < TOL[dtype]
    assert torch.equal(out_fast[2], qkv[:, 2]) and torch.equal(out_fast[:2, ..., rot:], qkv.transpose(0, 1)[:2, ..., rot:])
    check_grads(out_fast, fast, out_ref, ref, TOL[dtype], ["qkv"])


@pytest.mark.parametrize("slots", [0, 5], ids=["full", "free slots"])
@pytest.mark.parametrize("case", ROTARY_CASES[:3], ids=str)  # positions, heads, head dim, rotary dim
def test_rotary_qkv_into_a_kv_cache(case, slots):
    """A prefill's keys and values written by the kernel into a cache's (H, slots, hd) layout equal the
    reference's, q too, and the slots after the positions hold zeros whatever was there."""
    T, H, hd, rot = case
    torch.manual_seed(0)
    qkv = torch.randn(T, 3, H, hd, device=DEVICE, dtype=torch.bfloat16)
    cos, sin = rotary_tables(torch.randint(0, 3000, (T,), device=DEVICE), rot)
    results = []
    for impl in (rotary_qkv_into, triton_rotary.rotary_qkv_into):
        cache_k, cache_v = (torch.full((1, H, T + slots, hd), float("nan"), device=DEVICE, dtype=qkv.dtype) for _ in "kv")
        q = impl(qkv, cos, sin, cache_k[0].transpose(0, 1), cache_v[0].transpose(0, 1))
        results.append((q, cache_k, cache_v))
    (q, k, v), (q_ref, k_ref, v_ref) = results[1], results[0]
    assert torch.equal(v, v_ref) and torch.equal(v[0, :, :T], qkv[:, 2].transpose(0, 1))
    assert rel(q, q_ref) < TOL[torch.bfloat16] and rel(k, k_ref) < TOL[torch.bfloat16]
    assert torch.equal(q, triton_rotary.rotary_qkv(qkv, cos, sin)[0])  # the forward's rounding
    assert k[0, :, T:].eq(0).all() and v[0, :, T:].eq(0).all()


@pytest.mark.parametrize("window", [-1, 4])
def test_attention_over_rows_takes_the_rotary_kernel(window, monkeypatch):
    """Unpacked rows (B, L, D) go through the packed rotary kernel, as B x L positions with every row's
    angles alike: the output and the gradients equal the reference path's over each row alone."""
    from hnet.layers.attention import CausalSelfAttention

    torch.manual_seed(0)
    layer = CausalSelfAttention(48, num_heads=3, rotary_emb_dim=8, window_size=window).to(DEVICE)
    x = torch.randn(3, 13, 48, device=DEVICE)
    calls, kernel = [], triton_rotary.rotary_qkv
    monkeypatch.setattr(triton_rotary, "rotary_qkv", lambda qkv, *tables: calls.append(qkv.shape) or kernel(qkv, *tables))
    results = []
    for path in ("reference", "unfused"):  # unfused: the kernels (forced on CPU, under the interpreter)
        with dispatch.kernel_path(path):
            xi = x.clone().requires_grad_()
            out = torch.cat([layer(row) for row in xi.split(1)]) if path == "reference" else layer(xi)
            results.append((out, *torch.autograd.grad(out.square().sum(), [xi, layer.Wqkv.weight])))
    assert calls == [(39, 3, 3, 16)]  # the kernel ran once, over every row's positions
    for fast, ref in zip(results[1], results[0]):
        assert rel(fast, ref) < 1e-5


def test_bad_shapes_of_the_transformer_ops():
    with pytest.raises(ValueError, match="must be even"):
        triton_swiglu.swiglu(torch.zeros(2, 5, device=DEVICE))
    cos, sin = rotary_tables(torch.arange(4, device=DEVICE), 16)
    with pytest.raises(ValueError, match="exceeds the head dim 8"):
        triton_rotary.rotary_qkv(torch.zeros(4, 3, 2, 8, device=DEVICE), cos, sin)


# ---- gated RMSNorm ------------------------------------------------------------------------------------

NORM_SHAPES = [(1, 1, 7), (3, 5, 40), (2, 33, 128)] + real_shapes((8, 8192, 2048))


# z_slice: z is a slice of a wider tensor, as Mamba-2's gate is of in_proj's output (read in place).
# The output in float32 (the op's default) or in x's dtype, as the layer asks for it.
@pytest.mark.parametrize("z_slice", [False, True], ids=["z", "z slice"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_gated_rms_norm(shape, dtype, z_slice):
    torch.manual_seed(0)
    d = shape[-1]
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    z = torch.randn(*shape[:-1], d + 5 if z_slice else d, device=DEVICE, dtype=dtype)
    w = torch.randn(d, device=DEVICE, dtype=dtype)
    gate = (lambda t: t[..., 3 : 3 + d]) if z_slice else (lambda t: t)
    for out_dtype in dict.fromkeys((torch.float32, dtype)):
        fast, ref = leaves(x, z, w), leaves(x, z, w)
        y_fast = triton_norm.gated_rms_norm(fast[0], gate(fast[1]), fast[2], out_dtype=out_dtype)
        y_ref = gated_rms_norm(ref[0], gate(ref[1]), ref[2], out_dtype=out_dtype)
        assert y_fast.dtype == y_ref.dtype == out_dtype
        assert rel(y_fast, y_ref) < TOL[dtype]
        check_grads(y_fast, fast, y_ref, ref, TOL[dtype], "xzw")


# h in the model's dtype (or float32 for the embedding), the residual stream float32, weight float32;
# the gradient reaches residual' both through the norm and directly (the next block adds to it).
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_add_rms_norm(shape, dtype, with_residual):
    torch.manual_seed(0)
    h = torch.randn(shape, device=DEVICE, dtype=dtype)
    r = torch.randn(shape, device=DEVICE) if with_residual else None
    w = torch.randn(shape[-1], device=DEVICE)
    fast, ref = leaves(h, r, w), leaves(h, r, w)
    (y_fast, r_fast), (y_ref, r_ref) = triton_norm.add_rms_norm(*fast), add_rms_norm(*ref)
    assert y_fast.dtype == y_ref.dtype == dtype and r_fast.dtype == r_ref.dtype == torch.float32
    assert rel(y_fast, y_ref) < TOL[dtype] and torch.equal(r_fast, r_ref)
    dy, dr = torch.randn_like(y_ref), torch.randn_like(r_ref)
    wanted = [t for t in fast if t is not None]
    g_fast = torch.autograd.grad((y_fast, r_fast), wanted, (dy, dr), retain_graph=True)
    g_ref = torch.autograd.grad((y_ref, r_ref), [t for t in ref if t is not None], (dy, dr), retain_graph=True)
    for name, a, b in zip([n for n, t in zip("hrw", fast) if t is not None], g_fast, g_ref):
        assert a.dtype == b.dtype and rel(a, b) < TOL[dtype], f"d{name}: rel err {rel(a, b):.2e}"
    # A gradient on the normed output alone (the final norm of a stack: its residual output goes nowhere).
    g_fast = torch.autograd.grad(y_fast.float().square().sum(), wanted[0])[0]
    g_ref = torch.autograd.grad(y_ref.float().square().sum(), ref[0])[0]
    assert rel(g_fast, g_ref) < TOL[dtype]


# ---- the routing cosine -------------------------------------------------------------------------------

# q, k as the routing projections give them: float32, or bf16 under autocast (whose roundings both make).
@pytest.mark.parametrize("autocast", [False, pytest.param(True, marks=ON_GPU)], ids=lambda a: "bf16 autocast" if a else "fp32")
@pytest.mark.parametrize("shape", [(2, 70, 40), (1, 1, 7), (3, 50, 1024)] + real_shapes((1, 65535, 1024)), ids=str)
def test_rowwise_cosine(shape, autocast):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if autocast else torch.float32
    q, k = torch.randn(shape, device=DEVICE, dtype=dtype), torch.randn(shape, device=DEVICE, dtype=dtype)
    fast, ref = leaves(q, k), leaves(q, k)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        cos_fast, cos_ref = triton_cosine.rowwise_cosine(*fast), rowwise_cosine(*ref)
    assert cos_fast.dtype == cos_ref.dtype == dtype and cos_fast.shape == shape[:-1]
    if autocast:  # float32 sums in another order: at most one bf16 step apart, almost always equal
        assert (cos_fast.float() - cos_ref.float()).abs().max() <= 2**-8
        assert (cos_fast == cos_ref).float().mean() > 0.99
    else:
        assert rel(cos_fast, cos_ref) < 1e-5
    check_grads(cos_fast, fast, cos_ref, ref, TOL[dtype], "qk")


def test_rowwise_cosine_of_a_row_below_eps():
    """A q of norm below eps (1e-12): its norm clamps at eps, and its gradient (dcos k / |k| / eps) has no
    projection term."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 16, device=DEVICE), torch.randn(2, 5, 16, device=DEVICE)
    q[1, 3] *= 1e-13
    fast, ref = leaves(q, k), leaves(q, k)
    cos_fast, cos_ref = triton_cosine.rowwise_cosine(*fast), rowwise_cosine(*ref)
    assert rel(cos_fast, cos_ref) < 1e-5
    dy = torch.randn_like(cos_ref)
    for a, b in zip(torch.autograd.grad(cos_fast, fast, dy), torch.autograd.grad(cos_ref, ref, dy)):
        tiny = torch.zeros_like(b, dtype=torch.bool)
        tiny[1, 3] = True
        # that row's gradient is ~1e12 times the others': each part on its own
        assert rel(a[tiny], b[tiny]) < 1e-5 and rel(a[~tiny], b[~tiny]) < 1e-5


# ---- causal conv1d --------------------------------------------------------------------------------------

CONV_CASES = [  # b, l, d, K, packed, activation
    (2, 70, 40, 4, False, "silu"),
    (1, 1, 7, 4, False, "silu"),
    (2, 130, 100, 4, True, "silu"),
    (1, 50, 9, 3, True, None),
    (2, 20, 16, 2, False, None),
] + real_shapes((8, 8192, 2304, 4, False, "silu"), (1, 65536, 2304, 4, True, "silu"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_causal_conv1d(case, dtype):
    b, l, d, K, packed, activation = case
    torch.manual_seed(0)
    # x as Mamba-2 takes it: a slice of the wider in_proj output, so its rows are strided.
    x = torch.randn(b, l, d + 8, device=DEVICE, dtype=dtype)[..., :d]
    w, bias = torch.randn(d, K, device=DEVICE, dtype=dtype), torch.randn(d, device=DEVICE, dtype=dtype)
    seq_idx = packed_seq_idx(b, l, 4) if packed else None
    fast, ref = leaves(x, w, bias), leaves(x, w, bias)
    y_fast = triton_conv1d.causal_conv1d(*fast, seq_idx=seq_idx, activation=activation)
    y_ref = causal_conv1d(*ref, seq_idx=seq_idx, activation=activation)
    assert y_fast.dtype == y_ref.dtype
    assert rel(y_fast, y_ref) < TOL[dtype]
    check_grads(y_fast, fast, y_ref, ref, TOL[dtype], ["x", "weight", "bias"])


def test_causal_conv1d_without_bias():
    x, w = torch.randn(2, 20, 8, device=DEVICE), torch.randn(8, 4, device=DEVICE)
    assert rel(triton_conv1d.causal_conv1d(x, w), causal_conv1d(x, w)) < 1e-4


# ---- dechunk EMA ----------------------------------------------------------------------------------------

EMA_CASES = [(2, 70, 40, False), (1, 1, 7, False), (2, 100, 33, True), (1, 300, 20, True)] + real_shapes(
    (8, 1400, 1536, False), (1, 11200, 1536, True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", EMA_CASES, ids=str)
def test_ema_scan(case, dtype):
    b, m, d, packed = case
    torch.manual_seed(0)
    x = torch.randn(b, m, d, device=DEVICE, dtype=dtype)
    p = torch.rand(b, m, device=DEVICE).clamp(1e-4, 1 - 1e-4)
    seq_idx = packed_seq_idx(b, m, 3) if packed else None
    fast, ref = leaves(x, p), leaves(x.double(), p.double())  # the reference computes in float32 whatever it gets
    e_fast = triton_ema.ema_scan(*fast, seq_idx=seq_idx)
    e_ref = ema_scan(*ref, seq_idx=seq_idx)
    assert e_fast.dtype == torch.float32
    assert rel(e_fast, e_ref) < TOL[dtype]
    de = torch.randn_like(e_fast)
    g_fast = torch.autograd.grad(e_fast, fast, de)
    g_ref = torch.autograd.grad(e_ref, ref, de.double())
    for name, a, b_ in zip(["x", "p"], g_fast, g_ref):
        assert rel(a, b_) < TOL[dtype], f"d{name}: rel err {rel(a, b_):.2e}"


# ---- SSD: the four steps alone, then the whole scan -------------------------------------------------------

def ssd_inputs(b, l, h, p, g, n, dtype, packed=False, init=False, with_d=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)

    x = randn(b, l, h, p).to(dtype)
    dt = F.softplus(randn(b, l, h) - 2)
    A = -torch.exp(torch.rand(h, generator=gen) * 2).to(DEVICE)
    B, C = randn(b, l, g, n).to(dtype), randn(b, l, g, n, scale=n**-0.5).to(dtype)
    D = randn(h) if with_d else None
    s0 = randn(b, h, p, n) if init else None
    seq_idx = packed_seq_idx(b, l, 3, gen) if packed else None
    return x, dt, A, B, C, D, s0, seq_idx


def test_ssd_steps():
    """The intermediates of steps 1-3 against their definitions in torch (step 4 is the output itself)."""
    b, l, h, p, g, n, Q = 2, 50, 4, 8, 2, 16, 16
    x, dt, A, B, C, _, s0, seq_idx = ssd_inputs(b, l, h, p, g, n, torch.float32, packed=True, init=True)
    dt_chunked, cs = chunk_cumsum(dt, A, Q)
    c = cs.shape[2]
    dt_pad = F.pad(dt, (0, 0, 0, c * Q - l)).view(b, c, Q, h).permute(0, 3, 1, 2)
    assert torch.equal(dt_chunked, dt_pad)
    assert rel(cs, torch.cumsum(dt_pad * A[None, :, None, None], -1)) < 1e-6

    seq_pad = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, c * Q - l)], 1).view(b, c, Q)
    weight = torch.exp(cs[..., -1:] - cs) * dt_chunked * (seq_pad == seq_pad[..., -1:])[:, None]  # (b, h, c, Q)
    xq, Bq = (F.pad(t, (0, 0, 0, 0, 0, c * Q - l)).view(b, c, Q, t.shape[2], -1) for t in (x, B))
    Bq = Bq.repeat_interleave(h // g, dim=3)
    expected = torch.einsum("bhcj,bcjhp,bcjhn->bchpn", weight, xq, Bq)
    states = chunk_state(x, B, dt_chunked, cs, seq_idx)
    assert rel(states, expected) < 1e-5

    states_in, final = state_passing(states, cs, s0, seq_idx)
    state, prev = s0, seq_idx[:, 0]
    for k in range(c):
        assert rel(states_in[:, k], state) < 1e-6
        carry = torch.exp(cs[:, :, k, -1]) * (seq_pad[:, k, -1] == prev)[:, None]
        state, prev = carry[..., None, None] * state + states[:, k], seq_pad[:, k, -1]
    assert rel(final, state) < 1e-6

    Cq = F.pad(C, (0, 0, 0, 0, 0, c * Q - l)).view(b, c, Q, g, n)
    Bg = F.pad(B, (0, 0, 0, 0, 0, c * Q - l)).view(b, c, Q, g, n)
    cb = torch.einsum("bcign,bcjgn->bcgij", Cq, Bg).tril()
    assert rel(chunk_cb(B, C, Q).tril(), cb) < 1e-6


def test_ssd_backward_steps():
    """Each backward kernel against the same intermediate written in torch, one (Q, Q) matrix per chunk and
    head. Chunks of 128 steps make two 64-step blocks, so the kernels' loops over blocks run; 4 heads in
    2 groups make the dB and dC kernels sum over heads; p and n are not powers of 2."""
    b, l, h, p, g, n, Q = 2, 150, 4, 12, 2, 20, 128
    x, dt, A, B, C, D, s0, seq_idx = ssd_inputs(b, l, h, p, g, n, torch.float32, packed=True, init=True)
    dy, dfinal = torch.randn_like(x), torch.randn(b, h, p, n, device=DEVICE)
    dt_chunked, cs = chunk_cumsum(dt, A, Q)
    states = chunk_state(x, B, dt_chunked, cs, seq_idx)
    states_in, _ = state_passing(states, cs, s0, seq_idx)
    cb = chunk_cb(B, C, Q)
    c, pad = cs.shape[2], cs.shape[2] * Q - l

    def chunked(t, heads=True):  # (b, l, k, d) -> (b, c, h, Q, d), zero past l
        t = F.pad(t, (0, 0, 0, 0, 0, pad)).view(b, c, Q, t.shape[2], t.shape[3]).transpose(2, 3)
        return t.repeat_interleave(h // g, 2) if heads and t.shape[2] != h else t

    def unchunked(t):  # (b, c, k, Q, d) -> (b, l, k, d)
        return t.transpose(2, 3).reshape(b, c * Q, t.shape[2], t.shape[-1])[:, :l]

    def per_group(t):  # (b, c, h, Q, n) summed over each group's heads
        return unchunked(t.view(b, c, g, h // g, Q, n).sum(3))

    X, Bh, Ch, dY = chunked(x), chunked(B), chunked(C), chunked(dy)
    s, dtc = cs.transpose(1, 2), dt_chunked.transpose(1, 2)  # (b, c, h, Q)
    sidx = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, pad)], 1).view(b, c, Q)
    entering = torch.cat([seq_idx[:, :1], sidx[:, :-1, -1]], 1)
    E = torch.exp(s) * (sidx == entering[..., None])[:, :, None]
    W = torch.exp(s[..., -1:] - s) * (sidx == sidx[..., -1:])[:, :, None]
    a = torch.exp(s[..., -1]) * (sidx[..., -1] == entering)[..., None]  # (b, c, h)
    keep = torch.ones(Q, Q, dtype=torch.bool, device=DEVICE).tril() & (sidx[..., :, None] == sidx[..., None, :])
    L = torch.exp((s[..., :, None] - s[..., None, :]).masked_fill(~keep[:, :, None], float("-inf")))
    G = Ch @ Bh.transpose(-1, -2)
    GL = G * L

    # y's gradient on the entering states, then the recurrence backwards.
    dS_from_y = (dY * E[..., None]).transpose(-1, -2) @ Ch
    dstates = state_grad_from_output(dy, C, cs, seq_idx)
    assert rel(dstates, dS_from_y) < 1e-5
    grad, dS_out = dfinal, torch.empty_like(states)
    ds_carry, ds_state = torch.empty_like(a), torch.empty_like(a)  # d cs_last through a, through states
    for k in reversed(range(c)):
        dS_out[:, k] = grad
        ds_carry[:, k] = (grad * a[:, k, :, None, None] * states_in[:, k]).sum((-1, -2))
        ds_state[:, k] = (grad * states[:, k]).sum((-1, -2))
        grad = dS_from_y[:, k] + a[:, k, :, None, None] * grad
    dstates, dinit, ds_carry_fast = state_passing_bwd(dstates, states_in, cs, dfinal, seq_idx, has_initial_state=True)
    assert rel(dstates, dS_out) < 1e-5 and rel(dinit, grad) < 1e-5
    assert rel(ds_carry_fast, ds_carry.transpose(1, 2)) < 1e-5

    # dx, dD and ddt's part through the chunk's added state.
    U = Bh @ dS_out.transpose(-1, -2)
    dX = (W * dtc)[..., None] * U + (GL * dtc[..., None, :]).transpose(-1, -2) @ dY + D[:, None, None] * dY
    ddt_state = W * (X * U).sum(-1)
    dx, ddt_state_fast, dD, ds_state_fast = chunk_scan_bwd_dx(x, B, dy, cb, dt_chunked, cs, dS_out, D, seq_idx)
    assert rel(dx, unchunked(dX)) < 1e-5 and rel(dD, (dy * x).sum((0, 1, 3))) < 1e-5
    assert rel(ddt_state_fast, ddt_state.transpose(1, 2)) < 1e-5
    # <dS_out, states> summed step by step: sum_j dt_j W_j (x_j . U_j), the state part of ddt times dt.
    assert rel(ds_state_fast, ds_state.transpose(1, 2)) < 1e-5
    assert rel(ds_state_fast, (dtc * ddt_state).sum(-1).transpose(1, 2)) < 1e-5

    # The gradient on C.B summed over each group's heads, and the within-chunk parts of ds and ddt.
    dScores = dY @ X.transpose(-1, -2)  # (b, c, h, Q_i, Q_j)
    dG = dScores * L * dtc[..., None, :]
    dcb, ds_within, ddt_within = chunk_scan_bwd_dcb(x, dy, cb, dt_chunked, cs, seq_idx)
    expected_dcb = dG.view(b, c, g, h // g, Q, Q).sum(3)
    assert rel(dcb.float().tril(), expected_dcb) < 1e-5
    assert rel(ds_within, (dG * G).sum(-1).transpose(1, 2)) < 1e-5
    assert rel(ddt_within, (dScores * GL).sum(-2).transpose(1, 2)) < 1e-5

    # dC with y's gradient on its rows' cumulative sums through the entering state; dB.
    dC_state = E[..., None] * (dY @ states_in)
    dC, ds_entering = chunk_scan_bwd_dc(B, C, dy, dcb, cs, states_in, seq_idx)
    assert rel(dC, per_group(dC_state + dG @ Bh)) < 1e-5
    assert rel(ds_entering, (dC_state * Ch).sum(-1).transpose(1, 2)) < 1e-5
    dB = chunk_state_bwd_db(x, C, dcb, dt_chunked, cs, dS_out, seq_idx)
    assert rel(dB, per_group((W * dtc)[..., None] * (X @ dS_out) + dG.transpose(-1, -2) @ Ch)) < 1e-5

    # Through the cumulative sums into ddt and dA.
    ds_row, ddt_part = (dC_state * Ch).sum(-1) + (dG * G).sum(-1), ddt_state + (dScores * GL).sum(-2)
    ds = ds_row - dtc * ddt_part
    ds[..., -1] += ds_carry + ds_state
    d_dtA = ds.flip(-1).cumsum(-1).flip(-1)
    ddt, dA, _ = chunk_cumsum_bwd((ds_within, ds_entering), (ddt_state_fast, ddt_within), dt_chunked,
                               (ds_carry_fast, ds_state_fast), A, l)
    expected_ddt = (ddt_part + d_dtA * A[None, None, :, None]).permute(0, 1, 3, 2).reshape(b, c * Q, h)[:, :l]
    # dA: one sum per head over every position, which cancels (the GPU's summation order left 1.3e-5).
    assert rel(ddt, expected_ddt) < 1e-5 and rel(dA, (d_dtA * dtc).sum((0, 1, 3))) < REDUCED_GRAD_TOL[torch.float32]


SSD_CASES = [  # b, l, h, p, g, n, chunk, packed, initial state, D
    (2, 40, 4, 8, 2, 16, 16, False, False, True),
    (1, 1, 2, 8, 1, 16, 16, False, True, True),
    (2, 70, 2, 16, 1, 32, 32, True, True, True),
    (1, 33, 3, 8, 3, 8, 16, True, False, False),
    (1, 150, 8, 12, 1, 20, 128, True, True, True),  # two blocks per chunk, 4 runs of 2 heads in dB and dC
] + real_shapes((8, 8192, 24, 64, 1, 128, 256, False, False, True), (1, 32768, 24, 64, 1, 128, 256, True, False, True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SSD_CASES, ids=str)
def test_ssd_chunked(case, dtype):
    b, l, h, p, g, n, Q, packed, init, with_d = case
    x, dt, A, B, C, D, s0, seq_idx = ssd_inputs(b, l, h, p, g, n, dtype, packed, init, with_d)
    fast, ref = leaves(x, dt, A, B, C, D, s0), leaves(x, dt, A, B, C, D, s0)
    y_fast, s_fast = triton_ssd.ssd_chunked(*fast[:5], Q, *fast[5:], seq_idx=seq_idx, return_final_state=True)
    y_ref, s_ref = ssd_chunked(*ref[:5], Q, *ref[5:], seq_idx=seq_idx, return_final_state=True)
    assert y_fast.dtype == x.dtype and s_fast.dtype == torch.float32
    assert rel(y_fast, y_ref) < TOL[dtype] and rel(s_fast, s_ref) < TOL[dtype]
    dy, ds = torch.randn_like(y_ref.float()).to(dtype), torch.randn_like(s_ref)
    wanted = [t for t in fast if t is not None]
    g_fast = torch.autograd.grad((y_fast, s_fast), wanted, (dy, ds))
    g_ref = torch.autograd.grad((y_ref, s_ref), [t for t in ref if t is not None], (dy, ds))
    # The truth, in float64: the step-by-step recurrence where it is short enough, else the chunked reference.
    exact = leaves(*(t.double() if t is not None else None for t in (x, dt, A, B, C, D, s0)))
    if l <= 160:
        y_true, s_true = ssd_sequential(*exact, seq_idx=seq_idx)
    else:
        y_true, s_true = ssd_chunked(*exact[:5], Q, *exact[5:], seq_idx=seq_idx, return_final_state=True)
    assert rel(y_fast, y_true) < TOL[dtype] and rel(s_fast, s_true) < TOL[dtype]
    g_true = torch.autograd.grad((y_true, s_true), [t for t in exact if t is not None], (dy.double(), ds.double()))
    names = [nm for nm, t in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], fast) if t is not None]
    for name, a, r, t in zip(names, g_fast, g_ref, g_true):
        err, ref_err = rel(a, t), rel(r, t)
        print(f"{case} {dtype} d{name}: rel err vs float64 {err:.2e} (the reference in the same dtype {ref_err:.2e})")
        if name in ("A", "D"):  # one number per head: a sum with cancellation over every position
            assert err < max(REDUCED_GRAD_TOL[dtype], 2 * ref_err), f"d{name}: rel err {err:.2e}, reference {ref_err:.2e}"
        else:
            assert err < TOL[dtype], f"d{name}: rel err {err:.2e} vs float64"


def test_ssd_chunked_recomputes_the_states_bit_for_bit():
    """The backward recomputes the entering states (from the initial state, across packed sequences) and C.B
    with the forward's kernels: every gradient equals, bit for bit, that from the states the forward kept."""
    x, dt, A, B, C, D, s0, seq_idx = ssd_inputs(2, 70, 4, 8, 2, 16, torch.float32, packed=True, init=True)
    gen = torch.Generator().manual_seed(1)
    dy, ds = torch.randn(x.shape, generator=gen).to(DEVICE), torch.randn(s0.shape, generator=gen).to(DEVICE)
    grads = []
    for keep_states in (False, True):
        t = leaves(x, dt, A, B, C, D, s0)
        y, s = triton_ssd.ssd_chunked(*t[:5], 16, *t[5:], seq_idx=seq_idx, return_final_state=True,
                                      keep_states=keep_states)
        grads.append(torch.autograd.grad((y, s), t, (dy, ds)))
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], *grads):
        assert torch.equal(a, b), f"d{name}: {rel(a, b):.2e}"


def test_ssd_steep_decay():
    """Decays that underflow float32 within a block (cs falls by several hundred across a chunk): no NaN from
    0 x inf, nothing lost that the float64 recurrence keeps. Held to twice the float32 reference's own error
    where that is larger; dA, four sums that cancel more as the decay steepens, to 1e-3 (9.6e-4 on some dy)."""
    x, dt, A, B, C, D, s0, seq_idx = ssd_inputs(1, 200, 4, 8, 1, 16, torch.float32, packed=True, init=True)
    A = A * 20
    assert torch.cumsum(dt[0, :128] * A, 0)[-1].max().item() < -300
    inputs = (x, dt, A, B, C, D, s0)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for fn, dtype in ((lambda *t: triton_ssd.ssd_chunked(*t[:5], 128, *t[5:], seq_idx=seq_idx), torch.float32),
                      (lambda *t: ssd_chunked(*t[:5], 128, *t[5:], seq_idx=seq_idx), torch.float32),
                      (lambda *t: ssd_sequential(*t, seq_idx=seq_idx)[0], torch.float64)):
        t = leaves(*(v.to(dtype) for v in inputs))
        y = fn(*t)
        results.append((y, torch.autograd.grad(y, t, dy.to(dtype))))
    (y_fast, g_fast), (y_ref, g_ref), (y_true, g_true) = results
    assert torch.isfinite(y_fast).all() and rel(y_fast, y_true) < max(1e-5, 2 * rel(y_ref, y_true))
    for name, a, r, t in zip(["x", "dt", "A", "B", "C", "D", "s0"], g_fast, g_ref, g_true):
        bound = max(1e-3 if name == "A" else 1e-5, 2 * rel(r, t))
        assert torch.isfinite(a).all() and rel(a, t) < bound, f"d{name}: {rel(a, t):.2e}"


# ---- every launch configuration the tuner may pick ---------------------------------------------------------

def test_every_launch_candidate(monkeypatch):
    """The kernels take any of the block sizes, partial-sum counts and backward variants the launch tuner
    offers: the i-th distinct one of every launcher, for each i in turn, still gives the reference's result,
    forward and gradients (the SSD scan with chunks of 128, so blocks of 32, 64 and 128 all apply, and 8 heads
    in one group, so the dB and dC kernels can split them into 4 or 8 runs; conv1d). Warps and pipeline
    stages change how a kernel is scheduled, not what it computes: candidates that differ only there count once."""
    import importlib

    pick, counts = 0, {}

    def nth_candidate(name, key, positions, candidates, launch):
        layouts = [{k: v for k, v in c.items() if k not in ("num_warps", "num_stages")} for c in candidates]
        distinct = [c for i, c in enumerate(layouts) if c not in layouts[:i]]
        counts[name] = len(distinct)
        return launch(**distinct[pick % len(distinct)])

    for name in ("ssd.chunk_scan", "ssd.chunk_state", "ssd.state_passing", "conv1d"):  # the modules (ssd re-exports same-named functions)
        monkeypatch.setattr(importlib.import_module(f"hnet.ops.triton.{name}"), "launch_fastest", nth_candidate)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x, dt, A, B, C, D, s0, seq_idx = ssd_inputs(1, 200, 8, 16, 1, 16, dtype, packed=True, init=True)
    xc = torch.randn(2, 70, 40, device=DEVICE, dtype=dtype)
    w, bias = torch.randn(40, 4, device=DEVICE, dtype=dtype), torch.randn(40, device=DEVICE, dtype=dtype)
    conv_seq = packed_seq_idx(2, 70, 4)

    def needed(conv):  # the first pass runs everything and counts
        return pick == 0 or pick < max(v for k, v in counts.items() if k.startswith("conv1d") == conv)

    while pick == 0 or pick < max(counts.values()):
        if needed(conv=False):
            fast, ref = leaves(x, dt, A, B, C, D, s0), leaves(x, dt, A, B, C, D, s0)
            y_fast = triton_ssd.ssd_chunked(*fast[:5], 128, *fast[5:], seq_idx=seq_idx)
            y_ref = ssd_chunked(*ref[:5], 128, *ref[5:], seq_idx=seq_idx)
            assert rel(y_fast, y_ref) < TOL[dtype], f"candidate {pick}"
            check_grads(y_fast, fast, y_ref, ref, REDUCED_GRAD_TOL[dtype], ["x", "dt", "A", "B", "C", "D", "s0"])
        if needed(conv=True):
            fast, ref = leaves(xc, w, bias), leaves(xc, w, bias)
            y_fast = triton_conv1d.causal_conv1d(*fast, seq_idx=conv_seq)
            y_ref = causal_conv1d(*ref, seq_idx=conv_seq)
            assert rel(y_fast, y_ref) < TOL[dtype], f"candidate {pick}"
            check_grads(y_fast, fast, y_ref, ref, TOL[dtype], ["x", "weight", "bias"])
        pick += 1
    # 11 launchers (chunk_state serves two), each with more than one layout; every conv backward variant ran.
    assert len(counts) == 11 and min(counts.values()) > 1
    assert {c["variant"] for c in triton_conv1d.BWD_CANDIDATES} == {"two_pass", "segment", "recompute", "gather"}


# ---- dispatch and the whole model ------------------------------------------------------------------------

def test_dispatch_picks_reference_on_cpu_and_when_asked():
    x = torch.randn(2, 3)
    assert not dispatch.use_triton(x)
    with dispatch.force_triton():
        assert dispatch.use_triton(x)
        with dispatch.kernel_path("reference"):
            assert not dispatch.use_triton(x)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["tiny_1stage", "tiny_2stage", "tiny_hybrid_window"])  # 2stage: a packed inner stack feeds a second router
def test_model_fast_path_equals_reference(case):
    """The whole fast path (every kernel, Mamba-2's mixer fused) against the reference path, and against the
    official goldens within ../shared/reference/README.md's tolerances."""
    golden = pytest.importorskip("golden")
    if not golden.GOLDEN.exists():
        pytest.skip(f"no golden cases at {golden.GOLDEN}")
    from safetensors.torch import load_file

    model, inputs = golden.load_case(case)
    model = model.to(DEVICE)
    for packed in (False, True):
        kwargs = {"cu_seqlens": inputs["cu_seqlens"].to(DEVICE)} if packed else {"mask": inputs["mask"].to(DEVICE)}
        ids = inputs["input_ids_packed" if packed else "input_ids"].to(DEVICE)
        with dispatch.kernel_path("reference"):
            ref = golden.run_with_intermediates(model, ids, **kwargs)
        official = load_file(str(golden.GOLDEN / case / f"forward{'_packed' if packed else ''}_dechunk_fp32.safetensors"))
        for path in ("fast", "unfused"):  # Mamba-2's mixer fused, and op by op (the default until checked on a GPU)
            with dispatch.kernel_path(path), dispatch.force_triton():
                fast = golden.run_with_intermediates(model, ids, **kwargs)
            for name, r in ref.items():
                if r.dtype == torch.bool:
                    assert torch.equal(fast[name], r), (path, name)
                else:
                    assert rel(fast[name], r) < 1e-4, f"{path} {name}: rel err {rel(fast[name], r):.2e}"
            golden.compare({k: v.cpu() for k, v in fast.items()}, official, model.num_stages - 1, packed)


@pytest.mark.slow
def test_model_gradients_through_the_fused_mamba2():
    """The training step's gradients, fast path (Mamba-2's mixer fused, every kernel) against the reference
    path, for every parameter of a golden model, packed as training packs it (tiny_2stage: Mamba-2 layers at
    both stages, the inner one over a packed chunk sequence; one case, the interpreter is slow)."""
    golden = pytest.importorskip("golden")
    if not golden.GOLDEN.exists():
        pytest.skip(f"no golden cases at {golden.GOLDEN}")
    model, inputs = golden.load_case("tiny_2stage")
    model = model.to(DEVICE)
    ids, cu = inputs["input_ids_packed"].to(DEVICE), inputs["cu_seqlens"].to(DEVICE)
    weights = torch.randn(*ids.shape, 256, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    grads = {}
    for path in ("reference", "fast"):
        model.zero_grad(set_to_none=True)
        with dispatch.kernel_path(path), dispatch.force_triton() if path == "fast" else contextlib.nullcontext():
            (model(ids, cu_seqlens=cu).logits * weights).sum().backward()
        grads[path] = {n: p.grad for n, p in model.named_parameters()}
    mixers = [n for n in grads["fast"] if ".mixer.A_log" in n]
    assert len(mixers) == 4
    for name, g_ref in grads["reference"].items():
        g_fast = grads["fast"][name]
        assert g_ref is not None and g_fast is not None, name
        assert rel(g_fast, g_ref) < 1e-4, f"d{name}: rel err {rel(g_fast, g_ref):.2e}"


@pytest.fixture
def on_device():
    """The tensors a test makes with plain factories go to DEVICE (a GPU where there is one)."""
    with torch.device(DEVICE):
        yield


@pytest.mark.usefixtures("on_device")
@pytest.mark.parametrize("masked", [False, True])
def test_ssd_state_update(masked):
    """The decoding step's SSD kernel against its reference: the state rows that step (and only those), and y."""
    from hnet.ops.ssd import ssd_state_update as reference
    from hnet.ops.triton.mamba2_step import ssd_state_update

    torch.manual_seed(0)
    b, h, p, n = 5, 3, 24, 20  # neither a power of two
    xbc = torch.randn(b, h * p + 2 * n)  # x, B, C as slices of one row, as the layer splits them
    x, B, C = xbc[:, : h * p].view(b, h, p), xbc[:, h * p: h * p + n], xbc[:, h * p + n:]
    zxbcdt = torch.randn(b, 7 + h).to(torch.bfloat16)
    dt = zxbcdt[:, 7:]  # raw, a slice of the projection in the model's dtype, as the layer passes it
    dt_bias, A_log, D = torch.randn(h) * 0.5, torch.randn(h), torch.randn(h)
    dt[0, 0] = 30.0  # above softplus's threshold: dt itself
    state = torch.randn(b, h, p, n)
    mask = torch.tensor([True, False, True, True, False]) if masked else None
    want_state, got_state = state.clone(), state.clone()
    want = reference(want_state, x, dt, dt_bias, A_log, B, C, D, mask)
    got = ssd_state_update(got_state, x, dt, dt_bias, A_log, B, C, D, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_state, want_state, rtol=1e-5, atol=1e-5)
    if masked:
        assert torch.equal(got_state[~mask], state[~mask])  # a masked row keeps its state bit for bit
        assert not torch.equal(got_state[mask], state[mask])


@pytest.mark.usefixtures("on_device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_conv1d_step(masked, dtype):
    """The decoding step's convolution kernel against its reference: the output and the held inputs."""
    from hnet.ops.conv1d import causal_conv1d_step as reference
    from hnet.ops.triton.mamba2_step import causal_conv1d_step

    torch.manual_seed(0)
    b, c, K = 4, 70, 4
    x = torch.randn(b, c + 9).to(dtype)[:, 2: 2 + c]  # a slice of the projection
    weight, bias = torch.randn(c, 1, K).to(dtype), torch.randn(c).to(dtype)
    state = torch.randn(b, K - 1, c).to(dtype)
    mask = torch.tensor([True, False, False, True]) if masked else None
    want_state, got_state = state.clone(), state.clone()
    want = reference(want_state, x, weight, bias, mask)
    got = causal_conv1d_step(got_state, x, weight, bias, mask)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-7, "atol": 2**-7}  # a bf16 ulp
    torch.testing.assert_close(got, want, **tol)
    assert torch.equal(got_state, want_state)  # inputs shift, they are not computed
    if masked:
        assert torch.equal(got_state[~mask], state[~mask])
    assert torch.equal(got_state[0, -1], x[0]) and torch.equal(got_state[0, 0], state[0, 1])
    without = causal_conv1d_step(state.clone(), x, weight, None, mask)
    torch.testing.assert_close(without, reference(state.clone(), x, weight, None, mask), **tol)


@pytest.mark.parametrize("masked", [False, True])
def test_append_kv(masked):
    """The decoding step's cache write against its reference: each live row's slot, a ring's wrap."""
    from hnet.ops.cache import append_kv_ as reference
    from hnet.ops.triton.cache import append_kv_

    torch.manual_seed(0)
    B, H, slots, hd = 4, 3, 5, 12
    qkv = torch.randn(B, 3, H, hd).to(DEVICE, torch.bfloat16)  # k and v as views of the projection, as the layer passes them
    k, v = qkv[:, 1], qkv[:, 2]
    cache_k = torch.randn(B, H, slots, hd).to(DEVICE, torch.bfloat16)
    cache_v = torch.randn(B, H, slots, hd).to(DEVICE, torch.bfloat16)
    seqlen = torch.tensor([0, 3, 7, 12], device=DEVICE)  # 7 and 12 wrap a ring of 5 slots
    mask = torch.tensor([True, False, True, True], device=DEVICE) if masked else None
    want = cache_k.clone(), cache_v.clone()
    got = cache_k.clone(), cache_v.clone()
    reference(*want, seqlen, k, v, mask)
    append_kv_(*got, seqlen, k, v, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0][2, :, 2], k[2])  # row 2, position 7: slot 2
    if masked:
        assert torch.equal(got[0][1], cache_k[1]) and torch.equal(got[1][1], cache_v[1])


@pytest.mark.parametrize("masked", [False, True])
# one split a (row, head); two; more than the combine takes in one block (SPLIT_SLOTS = 256, 32 at a time)
@pytest.mark.parametrize("B,H,slots,hd", [(3, 2, 7, 12), (2, 3, 300, 16), (2, 1, 256 * 33 + 5, 8)])
def test_attend_kv_cache(masked, B, H, slots, hd):
    """The decoding step's attention against its reference: each row up to its own filled slot, a ring
    that is full, a row with one key; the rows that do not advance are not read (their output is 0)."""
    from hnet.ops.cache import attend_kv_cache as reference
    from hnet.ops.triton.cache import attend_kv_cache

    torch.manual_seed(0)
    qkv = torch.randn(B, 3, H, hd, device=DEVICE)  # q as a view of the projection, as the layer passes it
    q = qkv[:, 0]
    cache_k, cache_v = torch.randn(B, H, slots, hd, device=DEVICE), torch.randn(B, H, slots, hd, device=DEVICE)
    seqlen = torch.tensor([0, slots + 4, slots // 2][:B], device=DEVICE)  # one key; a full ring; half the slots
    mask = torch.tensor([True, False, True][:B], device=DEVICE) if masked else None
    want, got = reference(q, cache_k, cache_v, seqlen, mask), attend_kv_cache(q, cache_k, cache_v, seqlen, mask)
    live = torch.ones(B, dtype=torch.bool, device=DEVICE) if mask is None else mask
    torch.testing.assert_close(got[live], want[live], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0], cache_v[0, :, 0])  # one key: its value
    if masked:
        assert torch.equal(got[~live], torch.zeros_like(got[~live]))
