"""The chunked SSD scan against the float64 step-by-step recurrence, forward and gradients."""

import pytest
import torch

from hnet.ops.ssd import ssd_chunked, ssd_sequential


def make_inputs(b, l, h, p, n, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen)
    dt = torch.rand(b, l, h, generator=gen) * 0.5 + 0.01
    A = -torch.rand(h, generator=gen) * 2 - 0.1
    B = torch.randn(b, l, g, n, generator=gen)
    C = torch.randn(b, l, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    s0 = torch.randn(b, h, p, n, generator=gen)
    return x, dt, A, B, C, D, s0


CASES = {
    "len-not-multiple": dict(l=37, chunk=8, seq=None, init=False),
    "len-1": dict(l=1, chunk=8, seq=None, init=False),
    "len-exact": dict(l=32, chunk=16, seq=None, init=False),
    "initial-state": dict(l=29, chunk=8, seq=None, init=True),
    "packed": dict(l=37, chunk=8, seq=[0] * 5 + [1] * 20 + [2] * 12, init=False),
    "packed-boundary-at-chunk-start": dict(l=24, chunk=8, seq=[0] * 8 + [1] * 16, init=True),
    "packed-one-byte-sequences": dict(l=12, chunk=4, seq=list(range(12)), init=False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_chunked_equals_recurrence(case):
    l = case["l"]
    x, dt, A, B, C, D, s0 = make_inputs(2, l, 4, 8, 5, 2)
    seq_idx = torch.tensor([case["seq"]] * 2) if case["seq"] else None
    init = s0 if case["init"] else None
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D)]
    y, final = ssd_chunked(*leaves[:5], case["chunk"], D=leaves[5], initial_state=init, seq_idx=seq_idx, return_final_state=True)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y_ref, final_ref = ssd_sequential(*leaves64[:5], D=leaves64[5], initial_state=init, seq_idx=seq_idx)
    assert (y.double() - y_ref).abs().max() < 1e-4
    assert (final.double() - final_ref).abs().max() < 1e-4

    weights = torch.randn_like(y_ref)
    (y * weights.float()).sum().backward()
    (y_ref * weights).sum().backward()
    for name, a, b in zip("x dt A B C D".split(), leaves, leaves64):
        scale = b.grad.abs().max().clamp(min=1.0)
        assert (a.grad.double() - b.grad).abs().max() / scale < 1e-4, name


def test_packed_equals_separate_sequences():
    x, dt, A, B, C, D, _ = make_inputs(1, 30, 2, 4, 3, 1, seed=3)
    seq_idx = torch.tensor([[0] * 11 + [1] * 19])
    packed = ssd_chunked(x, dt, A, B, C, 8, D=D, seq_idx=seq_idx)
    first = ssd_chunked(x[:, :11], dt[:, :11], A, B[:, :11], C[:, :11], 8, D=D)
    second = ssd_chunked(x[:, 11:], dt[:, 11:], A, B[:, 11:], C[:, 11:], 8, D=D)
    assert torch.allclose(packed, torch.cat([first, second], 1), atol=1e-5)


def test_final_state_continues_the_scan():
    x, dt, A, B, C, D, _ = make_inputs(1, 40, 2, 4, 3, 1, seed=5)
    whole = ssd_chunked(x, dt, A, B, C, 16, D=D)
    _, state = ssd_chunked(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], 16, D=D, return_final_state=True)
    rest = ssd_chunked(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], 16, D=D, initial_state=state)
    assert torch.allclose(whole[:, 23:], rest, atol=1e-5)


def test_float64_inputs_are_computed_in_float64():
    """The GPU tests take the chunked scan of float64 inputs as the truth past the recurrence's reach (long
    sequences): it must not round through float32 on the way, forward or backward."""
    x, dt, A, B, C, D, s0 = (t.double() for t in make_inputs(1, 45, 2, 4, 3, 1, seed=5))
    seq_idx = torch.tensor([[0] * 20 + [1] * 25])
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, s0)]
    y, final = ssd_chunked(*leaves[:5], 16, D=leaves[5], initial_state=leaves[6], seq_idx=seq_idx,
                           return_final_state=True)
    leaves_seq = [t.detach().clone().requires_grad_() for t in leaves]
    y_seq, final_seq = ssd_sequential(*leaves_seq[:5], D=leaves_seq[5], initial_state=leaves_seq[6], seq_idx=seq_idx)
    assert y.dtype == final.dtype == torch.float64
    assert torch.allclose(y, y_seq, rtol=1e-12, atol=1e-12) and torch.allclose(final, final_seq, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum() + final.sum(), leaves)
    grads_seq = torch.autograd.grad((y_seq * weights).sum() + final_seq.sum(), leaves_seq)
    for name, a, b in zip("x dt A B C D s0".split(), grads, grads_seq):
        assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=1e-10, atol=1e-10), name
