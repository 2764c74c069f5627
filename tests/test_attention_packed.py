"""Packed attention without padding (flash varlen on CUDA) equals the padded-rows reference.

On CPU the varlen function is replaced by a per-sequence loop of plain attention with the same contract,
which checks our side of it: positions restart per sequence for the rotary, the window, the shapes. On a
GPU the real kernel runs, forward and gradients, in bf16.
"""

import pytest
import torch
import torch.nn.functional as F

import hnet.layers.attention as attention
from hnet.layers.attention import CausalSelfAttention

CU = [0, 1, 9, 40, 41, 97]  # lengths 1, 8, 31, 1, 56


def loop_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0), is_causal=None):
    """What flash varlen attention computes: each sequence alone, query i sees keys i - left .. i."""
    left = window_size[0]
    out = torch.empty_like(q)
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        i = torch.arange(b - a)
        offset = i[:, None] - i[None, :]
        allowed = (offset >= 0) & ((offset <= left) if left >= 0 else True)
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed).transpose(0, 1)
    return out


def packed_pair(window, device, dtype):
    torch.manual_seed(0)
    layer = CausalSelfAttention(64, num_heads=4, rotary_emb_dim=8, window_size=window, device=device)
    x = torch.randn(1, CU[-1], 64, device=device)
    cu = torch.tensor(CU, device=device, dtype=torch.int32)
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        fast = layer._forward_varlen(x, cu)
        rows, valid = attention.unpack(x[0], cu)
        reference = layer.forward(rows)[valid].unsqueeze(0)
    return layer, x, fast, reference


@pytest.mark.parametrize("window", [-1, 5])
def test_varlen_wiring_matches_padded_rows(window, monkeypatch):
    monkeypatch.setattr(attention, "varlen_attn", loop_varlen)
    monkeypatch.setattr(attention, "_VARLEN_WINDOW", True)
    _, _, fast, reference = packed_pair(window, "cpu", torch.float32)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_varlen_is_not_taken_on_cpu():
    layer = CausalSelfAttention(64, num_heads=4)
    assert not layer._takes_varlen(torch.zeros(1, 3, 64))  # CPU: the padded reference


@pytest.mark.skipif(not torch.cuda.is_available() or attention.varlen_attn is None, reason="needs CUDA flash varlen")
@pytest.mark.parametrize("window", [-1, 5])
def test_flash_varlen_matches_padded_rows_on_gpu(window):
    if window >= 0 and not attention._VARLEN_WINDOW:
        pytest.skip("this torch's varlen attention has no window")
    layer, x, fast, reference = packed_pair(window, "cuda", torch.bfloat16)
    assert layer._takes_varlen(x.bfloat16())
    torch.testing.assert_close(fast.float(), reference.float(), atol=2e-2, rtol=2e-2)
    grads = [torch.autograd.grad(out.float().square().sum(), layer.Wqkv.weight)[0] for out in (fast, reference)]
    torch.testing.assert_close(grads[0], grads[1], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("packed", [False, True])
def test_a_stack_makes_its_rotary_angles_once(packed, monkeypatch):
    """The layers of a stack see the same positions: the first makes the rotary angles, the next reuse
    them; the logits equal those of each row (or sequence) alone."""
    from test_generation import random_model

    monkeypatch.setattr(attention, "varlen_attn", loop_varlen)  # the packed path's wiring, on CPU
    monkeypatch.setattr(CausalSelfAttention, "_takes_varlen", lambda self, x: True)
    model = random_model("isotropic_T2")  # two attention layers
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    made, tables = [], attention.rotary_tables
    monkeypatch.setattr(attention, "rotary_tables", lambda *a: made.append(a[0].shape) or tables(*a))
    with torch.no_grad():
        if packed:
            got = model(ids.reshape(1, -1), cu_seqlens=torch.tensor([0, 11, 22])).logits[0].view(2, 11, -1)
        else:
            got = model(ids).logits
        assert made == [(22,) if packed else (11,)]
        alone = torch.cat([model(row[None]).logits for row in ids])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
