"""Routing, chunk, dechunk, STE and the ratio loss on inputs whose answers are known by hand."""

import json
import math

import pytest
import torch

from hnet.chunking.chunk import chunk, dechunk, plug_back, ste
from hnet.chunking.ratio_loss import ratio_loss, ratio_loss_terms
from hnet.chunking.routing import RoutingModule, neighbours, routing_output
from hnet.ops.cosine import rowwise_cosine


def test_routing_probabilities_by_hand():
    routing = RoutingModule(2)  # identity q/k at init: p_t = (1 - cos(h_{t-1}, h_t)) / 2
    h = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]]])
    r = routing(h)
    # cos: (same)=1 -> p 0, (orthogonal)=0 -> p 0.5 (not a boundary: strictly > 0.5), (opposite-ish)=0 -> 0.5, same -> 0
    assert torch.allclose(r.boundary_prob[0, :, 1], torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0]))
    assert r.boundary_mask.tolist() == [[True, False, False, False, False]]
    h[0, 3] = torch.tensor([0.0, -1.0])  # opposite of position 2: p = 1
    r = routing(h)
    assert r.boundary_mask.tolist() == [[True, False, False, True, False]]
    assert torch.allclose(r.selected_probs[0, :, 0], torch.tensor([1.0, 1.0, 0.5, 1.0, 0.5]))


def test_rowwise_cosine_is_the_official_einsum_with_its_roundings():
    torch.manual_seed(0)
    q, k = torch.randn(2, 300, 64), torch.randn(2, 300, 64)
    unit = torch.nn.functional.normalize
    official = lambda: torch.einsum("bld,bld->bl", unit(q, dim=-1), unit(k, dim=-1))  # noqa: E731
    torch.testing.assert_close(rowwise_cosine(q, k), official(), rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the einsum's bmm: bf16 in and out
        ours, theirs = rowwise_cosine(q, k), official()
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert (ours.float() - theirs.float()).abs().max() <= 2**-8  # at most one bf16 step apart, summed in fp32
    assert (ours == theirs).float().mean() > 0.99


def test_packed_sequence_starts_are_boundaries():
    routing = RoutingModule(2)
    h = torch.tensor([[[1.0, 0.0]] * 6])  # identical vectors: p = 0 except at sequence starts
    r = routing(h, cu_seqlens=torch.tensor([0, 2, 6]))
    assert r.boundary_mask.tolist() == [[True, False, True, False, False, False]]


def test_chunk_selects_positions_0_3_4_and_dechunk_by_hand():
    mask = torch.tensor([[True, False, False, True, True, False]])
    h = torch.arange(6, dtype=torch.float32).view(1, 6, 1) * 10
    z, next_cu, next_mask, _ = chunk(h, mask)
    assert z[0, :, 0].tolist() == [0.0, 30.0, 40.0] and next_mask.tolist() == [[True] * 3]

    p = torch.tensor([[1.0, 0.1, 0.2, 0.5, 0.8, 0.3]])
    boundary_prob = torch.stack([1 - p, p], -1)
    out = dechunk(torch.tensor([[[2.0], [4.0], [8.0]]]), mask, boundary_prob)
    e0 = (1 - 1e-4) * 2.0  # p clamped to 1 - 1e-4 in the dechunk only
    e1 = 0.5 * 4.0 + 0.5 * e0
    e2 = 0.8 * 8.0 + 0.2 * e1
    assert torch.allclose(out[0, :, 0], torch.tensor([e0, e0, e0, e1, e2, e2]), atol=1e-5)


def test_chunk_padded_rows_of_different_counts():
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    h = torch.arange(8, dtype=torch.float32).view(2, 4, 1)
    z, _, next_mask, _ = chunk(h, mask)
    assert z[0, :, 0].tolist() == [0.0, 1.0, 3.0]
    assert z[1, 0, 0].item() == 4.0 and next_mask.tolist() == [[True] * 3, [True, False, False]]


def test_chunk_and_dechunk_packed():
    mask = torch.tensor([[True, False, True, True, False]])
    cu = torch.tensor([0, 2, 5])
    h = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    z, next_cu, _, longest = chunk(h, mask, cu_seqlens=cu)
    assert z[0, :, 0].tolist() == [0.0, 2.0, 3.0] and next_cu.tolist() == [0, 1, 3] and longest == 2
    p = torch.tensor([[1.0, 0.0, 1.0, 0.5, 0.0]])
    out = dechunk(torch.tensor([[[2.0], [4.0], [8.0]]]), mask, torch.stack([1 - p, p], -1), next_cu)
    e0 = 0.9999 * 2.0
    e1 = 0.9999 * 4.0  # the EMA restarts with the second sequence
    e2 = 0.5 * 8.0 + 0.5 * e1
    assert torch.allclose(out[0, :, 0], torch.tensor([e0, e0, e1, e2, e2]), atol=1e-5)


def test_ste_is_one_forward_and_identity_backward():
    x = torch.tensor([0.7, 0.9], requires_grad=True)
    y = ste(x)
    assert y.tolist() == [1.0, 1.0]
    (y * torch.tensor([2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [2.0, 3.0]


def test_plug_back_is_the_ste_composition_bit_for_bit():
    """The decoder's input d * STE(p) + residual as one Function: the same forward and gradients exactly."""
    gen = torch.Generator().manual_seed(0)
    d, p, r = torch.randn(2, 7, 5, generator=gen), torch.rand(2, 7, 1, generator=gen), torch.randn(2, 7, 5, generator=gen)
    grad = torch.randn(2, 7, 5, generator=gen)
    results = []
    for fn in (plug_back, lambda d_, p_, r_: d_ * ste(p_) + r_):
        inputs = [t.clone().requires_grad_() for t in (d, p, r)]
        out = fn(*inputs)
        results.append((out, *torch.autograd.grad(out, inputs, grad)))
    for fused, composed in zip(*results):
        assert torch.equal(fused, composed)


def test_neighbours_give_the_slices_gradient_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 6, 3, generator=gen)
    d_prev, d_cur = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 5, 3, generator=gen)
    for grads in ((d_prev, d_cur), (d_prev, None), (None, d_cur)):
        results = []
        for fn in (neighbours, lambda h_: (h_[:, :-1], h_[:, 1:])):
            leaf = h.clone().requires_grad_()
            outs = fn(leaf)
            assert torch.equal(outs[0], h[:, :-1]) and torch.equal(outs[1], h[:, 1:])
            used = [(o, g) for o, g in zip(outs, grads) if g is not None]
            results.append(torch.autograd.grad([o for o, _ in used], leaf, [g for _, g in used])[0])
        assert torch.equal(*results)


def test_ratio_loss_by_hand():
    p = torch.tensor([[1.0, 0.2, 0.6, 0.2]])
    r = routing_output(p)  # boundaries at 0 and 2: F = 0.5, G = 0.5
    N = 4.0
    expected = N / (N - 1) * ((N - 1) * 0.5 * 0.5 + 0.5 * 0.5)
    assert math.isclose(ratio_loss([r], [N]).item(), expected, rel_tol=1e-6)
    # at the target rate (F = G = 1/N) the loss is 1
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert math.isclose(ratio_loss([routing_output(p)], [4.0]).item(), 1.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="target"):
        ratio_loss([r], [4.0, 2.0])


@pytest.mark.parametrize("case", ["tiny_1stage", "tiny_2stage"])
def test_ratio_loss_equals_the_official_values_of_the_goldens(case):
    from golden import GOLDEN, load_case

    if not GOLDEN.is_dir():
        pytest.skip("../shared/reference is not beside the repo")
    official = json.loads((GOLDEN / case / "meta.json").read_text())["ratio_loss_official_load_balancing_loss"]
    model, inputs = load_case(case)
    with torch.no_grad():
        routing = model(inputs["input_ids_packed"], cu_seqlens=inputs["cu_seqlens"]).routing
    N = official["N"]
    terms = ratio_loss_terms(routing, [N] * len(routing))
    for s, term in enumerate(terms):
        assert math.isclose(term.item(), official[f"stage{s}"]["packed"], rel_tol=1e-6)
    # the same from global counts (what training uses): one process holding the whole batch
    counts = torch.tensor([[float(r.boundary_mask.sum()), float(r.boundary_mask.numel())] for r in routing])
    assert math.isclose(ratio_loss(routing, [N] * len(routing), counts).item(), sum(t.item() for t in terms), rel_tol=1e-6)


def test_ratio_loss_over_processes_has_the_global_batch_gradient():
    """Two 'processes' with their halves of a batch, global counts: the mean of their gradients is the
    gradient of the loss of the whole batch (F and G of all positions), which the mean of per-half
    losses is not."""
    torch.manual_seed(0)
    logits = torch.randn(2, 64, requires_grad=True)

    def routed(p):
        return routing_output(torch.sigmoid(p))

    whole = ratio_loss([routed(logits.view(1, -1))], [6.0])
    (expected,) = torch.autograd.grad(whole, logits)
    halves = [routed(logits[i:i + 1]) for i in range(2)]
    counts = torch.tensor([[sum(float(r.boundary_mask.sum()) for r in halves), 128.0]])
    grads = [torch.autograd.grad(ratio_loss([r], [6.0], counts, world_size=2), logits)[0] for r in halves]
    torch.testing.assert_close((grads[0] + grads[1]) / 2, expected, rtol=1e-6, atol=1e-9)


def test_band_ratio_loss_by_hand():
    # F = 0.5 (boundaries at 0 and 2), G = 0.5: 2 bytes per chunk
    p = torch.tensor([[1.0, 0.2, 0.6, 0.2]], requires_grad=True)
    r = routing_output(p)
    # a point band is the official loss, value and gradient
    point = ratio_loss([r], [4.0], bands=[(4.0, 4.0)])
    official = ratio_loss([r], [4.0])
    g_point, = torch.autograd.grad(point, p, retain_graph=True)
    g_official, = torch.autograd.grad(official, p, retain_graph=True)
    assert math.isclose(point.item(), official.item(), rel_tol=1e-6) and torch.equal(g_point, g_official)
    # a band that holds 2 bytes per chunk: loss 1, no gradient
    inside = ratio_loss([r], [4.0], bands=[(1.5, 5.0)])
    assert math.isclose(inside.item(), 1.0, rel_tol=1e-6)
    assert torch.autograd.grad(inside, p, retain_graph=True)[0].abs().max() < 1e-7
    # below the band [3, 5]: the official loss with N = 3, the nearer edge.
    # L = N/(N-1) ((N-1) F G + (1-F)(1-G)) = 1.5 (2 * 0.25 + 0.25) = 1.125; dL/dG = 1.5 (2 F - (1 - F)) = 0.75,
    # and G is the mean of p[..., 1] over 4 positions: dL/dp = 0.1875 at every position.
    below = ratio_loss([r], [4.0], bands=[(3.0, 5.0)])
    assert math.isclose(below.item(), 1.125, rel_tol=1e-6)
    (grad,) = torch.autograd.grad(below, p)
    torch.testing.assert_close(grad, torch.full_like(p, 0.1875))
    # a stage without a band keeps the official loss
    assert math.isclose(ratio_loss([r, r], [4.0, 4.0], bands=[None, (1.5, 5.0)]).item(), official.item() + 1.0, rel_tol=1e-6)
