"""The short causal convolution and the dechunk EMA against plain loops."""

import torch

from hnet.ops.conv1d import causal_conv1d
from hnet.ops.ema import ema_scan, ema_scan_official_bf16


def conv_loop(x, w, bias):
    K = w.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(K):
            src = t - (K - 1) + k
            if src >= 0:
                out[:, t] += w[:, k] * x[:, src]
    return torch.nn.functional.silu(out + bias)


def test_conv_equals_loop_and_packed_equals_separate():
    gen = torch.Generator().manual_seed(0)
    x, w, bias = torch.randn(1, 13, 6, generator=gen), torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    assert torch.allclose(causal_conv1d(x, w, bias), conv_loop(x, w, bias), atol=1e-6)
    seq_idx = torch.tensor([[0] * 2 + [1] * 6 + [2] * 5])
    packed = causal_conv1d(x, w, bias, seq_idx=seq_idx)
    separate = torch.cat([conv_loop(x[:, a:b], w, bias) for a, b in [(0, 2), (2, 8), (8, 13)]], dim=1)
    assert torch.allclose(packed, separate, atol=1e-6)


def ema_loop(x, p):
    e, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        e = p[:, t, None] * x[:, t] + (1 - p[:, t, None]) * e
        out.append(e)
    return torch.stack(out, 1)


def test_ema_equals_loop_across_chunks_and_sequences():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 150, 8, generator=gen)
    p = torch.rand(2, 150, generator=gen).clamp(1e-4, 1 - 1e-4)
    assert (ema_scan(x, p) - ema_loop(x, p)).abs().max() < 2e-5
    seq_idx = torch.tensor([[0] * 70 + [1] * 80] * 2)
    expected = torch.cat([ema_loop(x[:, :70], p[:, :70]), ema_loop(x[:, 70:], p[:, 70:])], 1)
    assert (ema_scan(x, p, seq_idx=seq_idx) - expected).abs().max() < 2e-5


def test_ema_by_hand():
    x = torch.tensor([[[2.0], [4.0], [8.0]]])
    p = torch.tensor([[0.5, 0.25, 1.0 - 1e-4]])
    # e0 = 0.5*2 = 1; e1 = 0.25*4 + 0.75*1 = 1.75; e2 = 0.9999*8 + 0.0001*1.75
    expected = torch.tensor([[[1.0], [1.75], [0.9999 * 8 + 1e-4 * 1.75]]])
    assert torch.allclose(ema_scan(x, p), expected, atol=1e-6)


def test_official_bf16_ema_is_close_to_fp32_and_rounded_to_bf16():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 300, 16, generator=gen)
    p = torch.rand(1, 300, generator=gen).clamp(1e-4, 1 - 1e-4)
    out = ema_scan_official_bf16(x, p)
    assert torch.equal(out, out.to(torch.bfloat16).float())
    assert (out - ema_loop(x, p)).abs().max() < 0.1


def test_ema_keeps_float32_precision_after_steps_near_p_1():
    """Steps with p near 1 add about -9 each to the log decay; when the steps after them keep much (p small),
    decays taken as differences of cumulative sums lose four digits (2.4e-5 here, of values near 1): the
    masked cumulative sums do not."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 256, 8, generator=gen)
    p = torch.where(torch.arange(256) % 64 < 32, 1 - 1e-4, 0.05).expand(2, -1)
    assert (ema_scan(x, p).double() - ema_loop(x.double(), p.double())).abs().max() < 1e-6
