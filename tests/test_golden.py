"""Our model against the official implementation's golden tensors (../shared/reference)."""

import pytest
import torch
from safetensors.torch import load_file

from golden import CASES, GOLDEN, compare, load_case, run_with_intermediates

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/reference is not beside the repo")


@pytest.mark.parametrize("case", CASES)
def test_padded_matches_official_fp32_dechunk(case):
    model, inputs = load_case(case)
    golden = load_file(str(GOLDEN / case / "forward_dechunk_fp32.safetensors"))
    ours = run_with_intermediates(model, inputs["input_ids"], mask=inputs["mask"])
    innermost = model.num_stages - 1
    for s in range(innermost):  # chunk counts per stage
        assert torch.equal(ours[f"stage{s}.boundary_mask"].sum(-1), golden[f"stage{s + 1}.mask"].sum(-1))
    compare(ours, golden, innermost, packed=False)


@pytest.mark.parametrize("case", CASES)
def test_packed_matches_official_fp32_dechunk(case):
    model, inputs = load_case(case)
    golden = load_file(str(GOLDEN / case / "forward_packed_dechunk_fp32.safetensors"))
    cu = inputs["cu_seqlens"]
    ours = run_with_intermediates(model, inputs["input_ids_packed"], cu_seqlens=cu)
    compare(ours, golden, model.num_stages - 1, packed=True)
    # cu_seqlens of every inner stage, from the boundary masks exactly as the chunk layer forms them
    for s in range(1, model.num_stages):
        mask = ours[f"stage{s - 1}.boundary_mask"][0]
        prev = cu if s == 1 else golden[f"stage{s - 1}.cu_seqlens"]
        counts = torch.stack([mask[a:b].sum() for a, b in zip(prev[:-1].tolist(), prev[1:].tolist())])
        assert torch.equal(torch.cat([counts.new_zeros(1), counts.cumsum(0)]), golden[f"stage{s}.cu_seqlens"].long())


@pytest.mark.parametrize("case", CASES)
def test_official_bf16_dechunk_matches_official_default(case):
    model, inputs = load_case(case)
    model.set_official_bf16_dechunk(True)  # reproduces the kernel's bf16 rounding: same tight tolerances
    for name, kwargs, ids in [
        ("forward", {"mask": inputs["mask"]}, inputs["input_ids"]),
        ("forward_packed", {"cu_seqlens": inputs["cu_seqlens"]}, inputs["input_ids_packed"]),
    ]:
        golden = load_file(str(GOLDEN / case / f"{name}.safetensors"))
        ours = run_with_intermediates(model, ids, **kwargs)
        compare(ours, golden, model.num_stages - 1, packed=name == "forward_packed")


@pytest.mark.parametrize("case", CASES)
def test_padded_and_packed_logits_agree(case):
    model, inputs = load_case(case)
    padded = model(inputs["input_ids"], mask=inputs["mask"]).logits[inputs["mask"]]
    packed = model(inputs["input_ids_packed"], cu_seqlens=inputs["cu_seqlens"]).logits[0]
    assert (padded - packed).abs().max().item() < 1e-4
