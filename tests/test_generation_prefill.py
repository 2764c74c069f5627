"""Prefill in pieces: a prompt read in several forwards, or many prompts packed together, leaves the cache
and the logits a single forward over each prompt does; fresh and continued rows in one pack."""

import importlib

import pytest
import torch

from golden import CASES, load_case, requires_golden
from hnet.chunking.routing import RoutingCache
from hnet.generation import prefill
from hnet.generation.cache import layer_caches, tensors
from hnet.generation.prefill import mark_empty
from hnet.layers.attention import KVCache
from hnet.layers.mamba2 import Mamba2Cache
from test_generation import CONFIGS, random_model


pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_text(name):
    """A golden case (official weights, its text) or a random tiny model on random bytes."""
    if name in CASES:
        model, inputs = load_case(name)
        return model, inputs["input_ids"][0, :85]
    gen = torch.Generator().manual_seed(1)
    return random_model(name), torch.cat([torch.tensor([254]), torch.randint(0, 256, (84,), generator=gen)])


NAMES = [*(pytest.param(c, marks=requires_golden) for c in CASES), "2stage", "1stage_hybrid", "isotropic_m2T1"]
CUTS = {"one-byte-first": [1], "chunk-aligned": [16, 32, 64], "ragged": [7, 30, 31, 60],
        "every-byte-early": [1, 2, 3, 4]}


def assert_caches_equal(a, b, tol=1e-5):
    """Every tensor within tol (integers and booleans exactly); attention slots compared where filled."""
    b = dict(tensors(b))
    for name, t in tensors(a):
        u = b[name]
        if name.endswith(".k") or name.endswith(".v"):
            filled = int(dict(tensors(a))[name[:-2] + ".seqlen"].max())
            t, u = t[:, :, :filled], u[:, :, :filled]
        if t.dtype.is_floating_point:
            assert (t - u).abs().max() <= tol, name
        else:
            assert torch.equal(t, u), name


@torch.no_grad()
@pytest.mark.parametrize("cuts", CUTS.values(), ids=CUTS.keys())
@pytest.mark.parametrize("name", NAMES)
def test_prefill_in_pieces_equals_one_prefill(name, cuts):
    """The logits at every position of every piece, and the caches after the last."""
    model, ids = model_and_text(name)
    caches, logits = [], []
    for bounds in ([0, len(ids)], [0, *cuts, len(ids)]):
        cache = model.allocate_inference_cache(1, 4)  # attention caches grow as the pieces need
        logits.append(torch.cat([model(ids[None, a:b], cache=cache).logits[0] for a, b in zip(bounds, bounds[1:])]))
        caches.append(cache)
    assert (logits[0] - logits[1]).abs().max() < 1e-5
    assert_caches_equal(*caches)
    assert (logits[0] - model(ids[None]).logits[0]).abs().max() < 1e-5  # and the forward without a cache


@torch.no_grad()
@pytest.mark.parametrize("name", NAMES)
def test_packed_prefill_of_many_rows_in_small_forwards(name):
    """prefill() of rows of different lengths, at most 13 bytes a forward (so rows split over forwards, and a
    forward mixes fresh rows with continued ones), equals each row prefilled alone at once; then a batched
    step equals the forward over each row and its next byte."""
    model, ids = model_and_text(name)
    rows = [bytes(ids[:n].tolist()) for n in (85, 1, 40, 17)]
    cache = model.allocate_inference_cache(len(rows), 4)
    last = prefill(model, cache, rows, max_bytes=13)
    for i, row in enumerate(rows):
        alone = model.allocate_inference_cache(1, 4)
        expected = model(torch.tensor([list(row)]), cache=alone).logits[0, -1]
        assert (last[i] - expected).abs().max() < 1e-5
        mine = model.allocate_inference_cache(1, 4)
        prefill(model, mine, [row])
        assert_caches_equal(alone, mine)
    nxt = torch.tensor([65, 66, 67, 68])
    stepped = model.step(nxt, cache).logits
    for i, row in enumerate(rows):
        full = model(torch.tensor([[*row, int(nxt[i])]])).logits[0, -1]
        assert (stepped[i] - full).abs().max() < 1e-4


@torch.no_grad()
def test_prefill_leaves_rows_without_new_bytes_alone():
    model, ids = model_and_text("2stage")
    cache = model.allocate_inference_cache(3, 4)
    prefill(model, cache, [bytes(ids[:20].tolist()), bytes(ids[:5].tolist()), b""])
    before = {name: t.clone() for name, t in tensors(cache)}
    logits = prefill(model, cache, [b"more", b"", b""], max_bytes=3)
    assert logits[1:].abs().max() == 0
    for name, t in tensors(cache):
        if name.endswith(".k") or name.endswith(".v"):
            continue  # grown slots: compared through seqlen and the other rows' states
        assert torch.equal(t[1:], before[name][1:]), name


def test_prefill_rejects_an_empty_budget():
    model, _ = model_and_text("2stage")
    with pytest.raises(ValueError, match="max_bytes"):
        prefill(model, model.allocate_inference_cache(1, 4), [b"abc"], max_bytes=0)


@torch.no_grad()
def test_prefill_in_pieces_with_fixed_space_boundaries():
    """The space rule reads the byte before each piece from the cache: a piece that starts with a space after
    a word, or after another space, chunks as the whole text does; so does generation from it."""
    from hnet import HNetConfig
    from hnet.models.fixed import HNetFixedForCausalLM

    torch.manual_seed(0)
    model = HNetFixedForCausalLM(HNetConfig.from_dict(CONFIGS["1stage_hybrid"]), rule="space").eval()
    ids = torch.tensor([254, *b"To be,  or not to be: that is the question."])
    caches, logits = [], []
    for bounds in ([0, len(ids)], [0, 3, 6, 7, 9, 20, len(ids)]):  # pieces start at ',', ' ', ' ', 'r', 't'
        cache = model.allocate_inference_cache(1, 4)
        logits.append(torch.cat([model(ids[None, a:b], cache=cache).logits[0] for a, b in zip(bounds, bounds[1:])]))
        caches.append(cache)
    assert (logits[0] - logits[1]).abs().max() < 1e-5
    assert_caches_equal(*caches)
    text = bytes(ids[1:].tolist())
    assert model.generate([text], 12, temperature=0, prefill_bytes=5) == model.generate([text], 12, temperature=0)


@torch.no_grad()
def test_a_prefill_reads_once_which_caches_are_empty(monkeypatch):
    """One host read tells every layer's cache whether it holds anything; the layers ask no more. The answer
    is per cache: here one Mamba-2 layer of a fresh cache already holds a prompt (no model prefill leaves a
    cache so), and the logits and caches equal those of the layers asking for themselves."""
    model = random_model("2stage")
    text = bytes(range(40, 100))

    def cache_with_one_layer_used():
        cache = model.allocate_inference_cache(1, 0)
        x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(2))
        model.backbone.encoder.layers[0].mixer(x, cu_seqlens=torch.tensor([0, 5]), cache=cache.encoder[0])
        return cache

    with monkeypatch.context() as m:  # the layers ask for themselves
        m.setattr(importlib.import_module("hnet.generation.prefill"), "mark_empty", lambda cache: None)
        want_cache = cache_with_one_layer_used()
        want = prefill(model, want_cache, [text])
    cache = cache_with_one_layer_used()
    reads, tolist = [], torch.Tensor.tolist
    for kind in (KVCache, Mamba2Cache, RoutingCache):
        monkeypatch.setattr(kind, "holds_nothing", lambda c: pytest.fail("a layer asked for itself"))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or tolist(t))
    got = prefill(model, cache, [text])
    marked = list(layer_caches(cache, (KVCache, Mamba2Cache, RoutingCache)))
    assert [c.empty for c in marked] == [None] * len(marked)  # used, forgotten
    assert len(reads) == 3  # mark_empty's and each stage's chunk count: no stack of attention asked
    assert torch.equal(got, want)
    assert_caches_equal(cache, want_cache, tol=0)


def test_mark_empty_answers_as_each_cache_would():
    """One read for all the caches gives each layer's and each stage's own `holds_nothing`: a state with only
    its conv inputs set, only one row of a KV cache filled, or one row of a stage's routing that has seen a
    position, holds something."""
    cache = random_model("2stage").allocate_inference_cache(2, 4)
    kinds = (KVCache, Mamba2Cache, RoutingCache)
    ssm, kv = list(layer_caches(cache, Mamba2Cache)), list(layer_caches(cache, KVCache))
    ssm[1].conv_state[1, 0, 3] = 0.5
    ssm[2].ssm_state[0, 0, 0, 0] = -1e-30
    kv[0].seqlen[1] = 3
    list(layer_caches(cache, RoutingCache))[1].has_seen_tokens[1] = True
    mark_empty(cache)
    got = [c.empty for c in layer_caches(cache, kinds)]
    assert got == [bool(c.holds_nothing()) for c in layer_caches(cache, kinds)]
    assert got.count(False) == 4 and len(got) == len(ssm) + len(kv) + 2


@torch.no_grad()
@pytest.mark.parametrize("name", ["2stage", "1stage_hybrid"])
def test_prefill_through_the_kernels_equals_the_reference(name):
    """A fresh row (whose keys and values the rotary kernel writes into a new cache), the same row continued,
    then more rows packed: on the Triton path (the interpreter here; CUDA's path) as on the reference."""
    from hnet.ops.dispatch import kernel_path

    model, ids = model_and_text(name)
    out = {}
    for path in ("reference", "unfused"):
        with kernel_path(path):
            cache = model.allocate_inference_cache(1, 0)
            logits = [prefill(model, cache, [bytes(ids[:50].tolist())]), prefill(model, cache, [bytes(ids[50:].tolist())])]
            rows = model.allocate_inference_cache(2, 0)
            logits.append(prefill(model, rows, [bytes(ids[:30].tolist()), bytes(ids[:70].tolist())], max_bytes=40))
        out[path] = torch.cat(logits), cache, rows
    assert (out["unfused"][0] - out["reference"][0]).abs().max() < 1e-4
    for fast, ref in zip(out["unfused"][1:], out["reference"][1:]):
        assert_caches_equal(fast, ref, tol=1e-4)


def test_a_model_cache_is_zeroed_in_one_op_per_dtype(monkeypatch):
    """allocate_inference_cache zeroes every tensor of the tree (whatever the memory held) with one
    `_foreach_zero_` per dtype, not a zeros each; outside a model's allocation `cache_zeros` is torch.zeros."""
    from hnet.ops import cache as cache_ops

    calls, foreach_zero = [], torch._foreach_zero_
    monkeypatch.setattr(torch, "_foreach_zero_", lambda ts: calls.append(ts) or foreach_zero(ts))
    monkeypatch.setattr(torch, "empty", lambda *a, empty=torch.empty, **k: empty(*a, **k).fill_(7))  # garbage
    cache = random_model("2stage").allocate_inference_cache(3, 4)
    made = [t for _, t in tensors(cache) if t.numel()]
    assert len(made) > 20 and all(t.eq(0).all() for t in made)
    assert sorted(str(ts[0].dtype) for ts in calls) == ["torch.bool", "torch.float32", "torch.int64"]
    assert sum(len(ts) for ts in calls) == len(made)
    assert cache_ops.cache_zeros(2, 3).eq(0).all()


@torch.no_grad()
def test_a_stack_writes_its_layers_caches_together(monkeypatch):
    """In a prefill a stack's Mamba-2 layers store their states, and its attention layers advance their
    positions, in one foreach op each after the stack, not an op per layer; then they hold what the forward
    and the steps after it need (`test_packed_prefill_of_many_rows_in_small_forwards` and the others)."""
    model, ids = model_and_text("isotropic_m2T1")  # one stack: two Mamba-2 layers, one attention layer
    calls = []
    for name in ("_foreach_copy_", "_foreach_add_"):
        op = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda dst, src, op=op, name=name: calls.append((name, len(dst))) or op(dst, src))
    cache = model.allocate_inference_cache(1, 0)
    prefill(model, cache, [bytes(ids[:30].tolist())])
    prefill(model, cache, [bytes(ids[30:].tolist())])  # continued: the general paths
    assert calls == [("_foreach_copy_", 2), ("_foreach_add_", 1)] * 2
    assert [int(c.seqlen) for c in layer_caches(cache, KVCache)] == [len(ids)]
