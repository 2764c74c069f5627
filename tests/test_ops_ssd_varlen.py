"""The varlen SSD of prefill: packed sequences, each from its own initial state, each ending in its own
final state, against the float64 recurrence run on every sequence alone."""

import pytest
import torch

from hnet.ops.dispatch import force_triton, ssd_varlen
from hnet.ops.ssd import ssd_sequential

CASES = {  # sequence lengths, chunk size
    "mid-chunk-ends": ([5, 20, 12], 8),
    "end-at-chunk-end": ([8, 16], 8),
    "empty-sequences": ([0, 7, 0, 0, 9, 0], 4),
    "one-byte-sequences": ([1] * 6, 4),
    "longer-than-chunks": ([41, 3], 8),
}


def inputs(lengths, h=4, p=8, n=5, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    x = torch.randn(1, T, h, p, generator=gen)
    dt = torch.rand(1, T, h, generator=gen) * 0.5 + 0.01
    A = -torch.rand(h, generator=gen) * 2 - 0.1
    B, C = torch.randn(1, T, g, n, generator=gen), torch.randn(1, T, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    h0 = torch.randn(len(lengths), h, p, n, generator=gen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return x, dt, A, B, C, D, h0, cu


def alone(x, dt, A, B, C, D, h0, cu):
    """Every sequence through the float64 recurrence by itself: (y (T, h, p), finals (s, h, p, n))."""
    ys, finals = [], []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if e == s:
            finals.append(h0[i].double())
            continue
        y, final = ssd_sequential(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D=D, initial_state=h0[i:i + 1])
        ys.append(y[0])
        finals.append(final[0])
    return torch.cat(ys), torch.stack(finals)


@pytest.mark.parametrize("path", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("with_initial_states", [True, False], ids=["continuing", "fresh"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_varlen_equals_each_sequence_alone(case, with_initial_states, path):
    lengths, chunk = case
    x, dt, A, B, C, D, h0, cu = inputs(lengths)
    h0[1::3] = 0  # fresh rows among continuing ones
    if not with_initial_states:
        h0 = torch.zeros_like(h0)
    if path == "triton":
        pytest.importorskip("triton")
        chunk = max(chunk, 16)  # the kernels take power-of-2 chunks of at least 16
    with force_triton() if path == "triton" else torch.no_grad():
        y, final = ssd_varlen(x, dt, A, B, C, chunk, cu, D=D, initial_states=h0 if with_initial_states else None)
    y_ref, final_ref = alone(x, dt, A, B, C, D, h0, cu)
    assert final.shape == (len(lengths), 4, 8, 5) and final.dtype == torch.float32
    assert (y[0].double() - y_ref).abs().max() < 1e-4
    assert (final.double() - final_ref).abs().max() < 1e-4
