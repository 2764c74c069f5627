"""Each layer's inference cache: prefill with the parallel forward, then `step`, equals the forward."""

import pytest
import torch

from hnet.generation.cache import select_rows
from hnet.layers.attention import CausalSelfAttention
from hnet.layers.mamba2 import Mamba2


def cached(layer, x, prefill: int, mask=None):
    """Outputs at every position of x (B, L, D): the forward over `prefill` positions, then steps."""
    cache = layer.allocate_inference_cache(x.shape[0], x.shape[1])
    outs = [layer(x[:, :prefill], cache=cache)]
    outs += [layer.step(x[:, t], cache, mask)[:, None] for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1), cache


def mamba(seed=0):
    torch.manual_seed(seed)
    return Mamba2(64, d_state=16, chunk_size=16)


@torch.no_grad()
@pytest.mark.parametrize("prefill", [1, 3, 20])
def test_mamba2_steps_equal_the_forward(prefill):
    layer = mamba()
    x = torch.randn(2, 40, 64)
    out, _ = cached(layer, x, prefill)
    assert (out - layer(x)).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("length", [1, 2, 20])  # shorter than the conv's 3 held inputs, and longer
def test_mamba2_prefill_of_one_fresh_row_equals_the_general_path(length, monkeypatch):
    """A one-row cache that holds nothing takes the forward's mixer (no conv gathers, no varlen scan):
    same outputs and cache as the general path, here the same row beside an empty one."""
    layer = mamba()
    x = torch.randn(1, length, 64)
    general = layer.allocate_inference_cache(2, 8)
    want = layer(x, cu_seqlens=torch.tensor([0, length, length]), cache=general)
    one = layer.allocate_inference_cache(1, 8)
    with monkeypatch.context() as m:
        m.setattr(Mamba2, "_conv_continuing", lambda *a: pytest.fail("the one fresh row took the general path"))
        got = layer(x, cu_seqlens=torch.tensor([0, length]), cache=one)
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(one.conv_state[0], general.conv_state[0])
    assert (one.ssm_state[0] - general.ssm_state[0]).abs().max() < 1e-5
    again = layer(x, cu_seqlens=torch.tensor([0, length]), cache=one)  # the row holds something now: general
    assert (again - layer(torch.cat([x, x], 1))[:, length:]).abs().max() < 1e-5


@torch.no_grad()
def test_mamba2_state_has_a_fixed_size():
    layer = mamba()
    sizes = lambda c: [tuple(c.conv_state.shape), tuple(c.ssm_state.shape)]
    small, large = layer.allocate_inference_cache(2, 8), layer.allocate_inference_cache(2, 100_000)
    assert sizes(small) == sizes(large) == [(2, 3, 128 + 2 * 16), (2, 2, 64, 16)]
    cache = layer.allocate_inference_cache(2, 8)
    layer(torch.randn(2, 5, 64), cache=cache)
    storage = [cache.conv_state.data_ptr(), cache.ssm_state.data_ptr()]
    for _ in range(200):  # far beyond max_seqlen: the state does not depend on it
        layer.step(torch.randn(2, 64), cache)
    assert sizes(cache) == sizes(small)
    assert [cache.conv_state.data_ptr(), cache.ssm_state.data_ptr()] == storage


@torch.no_grad()
@pytest.mark.parametrize("window", [-1, 0, 4])
def test_attention_steps_equal_the_forward_beyond_the_window(window):
    """The official cached decode once ignored the window; here the cache is a ring of window + 1 slots."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(64, num_heads=2, rotary_emb_dim=16, window_size=window)
    x = torch.randn(2, 30, 64)
    full = layer(x)
    for prefill in (1, 3, 12):
        out, cache = cached(layer, x, prefill)
        assert (out - full).abs().max() < 1e-5, f"prefill {prefill}"
    assert cache.k.shape[2] == (30 if window < 0 else window + 1)
    if window >= 0:  # the window matters at these lengths
        unwindowed = CausalSelfAttention(64, num_heads=2, rotary_emb_dim=16)
        unwindowed.load_state_dict(layer.state_dict())
        assert (unwindowed(x) - full)[:, window + 1:].abs().max() > 1e-2


def windowed_attention():
    torch.manual_seed(0)
    return CausalSelfAttention(64, num_heads=2, rotary_emb_dim=16, window_size=3)


@torch.no_grad()
@pytest.mark.parametrize("make", [mamba, windowed_attention])
def test_masked_rows_keep_their_cache(make):
    """Row 1 skips every other step: its outputs at its real steps equal the forward over those only."""
    layer = make()
    x = torch.randn(2, 16, 64)
    cache = layer.allocate_inference_cache(2, 16)
    layer(x[:, :2], cache=cache)
    outs = []
    for t in range(2, 16):
        mask = torch.tensor([True, t % 2 == 0])
        outs.append(layer.step(x[:, t], cache, mask))
    outs = torch.stack(outs, dim=1)
    assert (outs[0] - layer(x[:1])[0, 2:]).abs().max() < 1e-5
    row1 = torch.cat([x[1, :2], x[1, 2::2]])[None]
    assert (outs[1, ::2] - layer(row1)[0, 2:]).abs().max() < 1e-5


def test_select_rows_gives_views_that_prefill_writes_through():
    layer = mamba()
    cache = layer.allocate_inference_cache(3, 8)
    with torch.no_grad():
        layer(torch.randn(1, 5, 64), cache=select_rows(cache, slice(1, 2)))
    assert cache.ssm_state[1].abs().sum() > 0
    assert cache.ssm_state[0].abs().sum() == 0 and cache.ssm_state[2].abs().sum() == 0


def prefill_in_rounds(layer, rows, cuts):
    """Prefill rows (each (L_i, D)) into one cache in rounds: round r packs row i's positions
    cuts[i][r - 1]:cuts[i][r] (possibly none), every row continuing its own row of the cache."""
    cache = layer.allocate_inference_cache(len(rows), 4)  # too small on purpose: a prefill makes room
    outs = [[] for _ in rows]
    for r in range(1, len(cuts[0])):
        pieces = [row[c[r - 1]:c[r]] for row, c in zip(rows, cuts)]
        cu = torch.tensor([0, *torch.tensor([len(p) for p in pieces]).cumsum(0).tolist()])
        out = layer(torch.cat(pieces)[None], cu_seqlens=cu, cache=cache)[0]
        for i in range(len(rows)):
            outs[i].append(out[cu[i]:cu[i + 1]])
    return [torch.cat(o) for o in outs], cache


def attention(window):
    def make():
        torch.manual_seed(0)
        return CausalSelfAttention(64, num_heads=2, rotary_emb_dim=16, window_size=window)
    make.__name__ = f"attention_window{window}"
    return make


LAYERS = [mamba, attention(-1), attention(0), attention(4)]


@torch.no_grad()
@pytest.mark.parametrize("make", LAYERS, ids=lambda m: m.__name__)
def test_one_row_prefilled_in_pieces_then_stepped_equals_the_forward(make):
    """A cache of one row (its own paths: the contiguous KV write, Mamba's fresh row) in three pieces,
    then steps: every output is the forward's over the whole row."""
    layer = make()
    x = torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(3))
    cache = layer.allocate_inference_cache(1, 0 if isinstance(layer, CausalSelfAttention) else 24)
    outs = [layer(x[:, a:b], cu_seqlens=torch.tensor([0, b - a]), cache=cache) for a, b in ((0, 7), (7, 8), (8, 20))]
    outs += [layer.step(x[:, t], cache)[:, None] for t in range(20, 24)]
    assert (torch.cat(outs, dim=1) - layer(x)).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("make", LAYERS, ids=lambda m: m.__name__)
def test_prefill_in_packed_pieces_equals_the_forward(make):
    """Rows of different lengths, each cut in pieces at its own places (empty pieces too, pieces longer
    than a window), packed together round by round: each row's outputs are the forward's over it whole,
    and the cache then steps on as if the row had been prefilled at once."""
    layer = make()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 64, generator=gen) for n in (23, 1, 17, 30)]
    cuts = [[0, 5, 5, 11, 23], [0, 0, 1, 1, 1], [0, 17, 17, 17, 17], [0, 2, 3, 29, 30]]
    outs, cache = prefill_in_rounds(layer, rows, cuts)
    for row, out in zip(rows, outs):
        assert (out - layer(row[None])[0]).abs().max() < 1e-5
    _, at_once = prefill_in_rounds(layer, rows, [[0, len(r)] for r in rows])
    tensors = [n for n, t in vars(cache).items() if isinstance(t, torch.Tensor)]
    for name, a, b in [(n, getattr(cache, n), getattr(at_once, n)) for n in tensors]:
        assert a.shape == b.shape and (a.float() - b.float()).abs().max() < 1e-5, name
    nxt = torch.randn(len(rows), 64, generator=gen)
    stepped = layer.step(nxt, cache)
    for i, row in enumerate(rows):
        full = layer(torch.cat([row, nxt[i:i + 1]])[None])[0, -1]
        assert (stepped[i] - full).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen attention and the kernels: CUDA only")
def test_one_fresh_row_prefilled_on_the_gpu():
    """CUDA, bf16: the rotary kernel writes a fresh row's keys and values into the new cache, the forward's
    attention (SDPA) reads them there, and the output equals the layer's forward; the cache holds the
    forward's rotated keys and values, zeros after them."""
    from hnet.ops.dispatch import rotary_qkv
    from hnet.ops.rotary import rotary_tables

    torch.manual_seed(0)
    layer = CausalSelfAttention(96, num_heads=3, rotary_emb_dim=16).to("cuda", torch.bfloat16)
    x = torch.randn(1, 50, 96, device="cuda", dtype=torch.bfloat16)
    cache = layer.allocate_inference_cache(1, 0)
    out = layer(x, cache=cache)
    torch.testing.assert_close(out, layer(x), atol=2e-2, rtol=2e-2)
    q, k, v = rotary_qkv(layer.Wqkv(x[0]).view(50, 3, 3, 32), *rotary_tables(torch.arange(50, device="cuda"), 16))
    assert int(cache.seqlen) == 50 and cache.k.shape[2] > 50
    assert torch.equal(cache.k[0, :, :50], k.transpose(0, 1)) and torch.equal(cache.v[0, :, :50], v.transpose(0, 1))
    assert cache.k[0, :, 50:].eq(0).all() and cache.v[0, :, 50:].eq(0).all()
