"""Run our model on a golden case of ../shared/reference and collect what the goldens hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hnet.models.hnet as hnet_module
from hnet import HNetConfig, HNetForCausalLM

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
GOLDEN = REFERENCE / "golden"
CASES = ["tiny_1stage", "tiny_2stage", "tiny_hybrid_window"]
requires_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/reference is not beside the repo")

# ../shared/reference/README.md section 8: |ours - official| on valid positions.
TOLERANCE = {
    "boundary_prob": 2e-6, "selected_probs": 2e-6, "encoder_out": 2e-5, "inner_main_out": 2e-5,
    "dechunk_out": 6e-5, "decoder_out": 6e-5, "main_out": 6e-5, "logits": 1e-4,
}


def load_case(case: str):
    model = HNetForCausalLM(HNetConfig.from_json(GOLDEN / case / "config.json"))
    model.load_weights(load_file(str(GOLDEN / case / "weights.safetensors")), source=case)
    return model.eval(), load_file(str(GOLDEN / case / "input.safetensors"))


@torch.no_grad()
def run_with_intermediates(model, input_ids, **kwargs) -> dict[str, torch.Tensor]:
    """Forward, returning the golden-named tensors: logits, per-stage routing, hidden states."""
    out: dict[str, torch.Tensor] = {}
    stages = [m for m in model.modules() if isinstance(m, hnet_module.HNet)]
    hooks = []
    for s, stage in enumerate(stages):
        def keep(name):
            return lambda _m, _i, o: out.__setitem__(name, o[0] if isinstance(o, tuple) else o)
        hooks.append(stage.main_network.register_forward_hook(keep(f"stage{s}.main_out")))
        if not stage.is_innermost:
            hooks.append(stage.encoder.register_forward_hook(keep(f"stage{s}.encoder_out")))
            hooks.append(stage.decoder.register_forward_hook(keep(f"stage{s}.decoder_out")))
    dechunk_outs = []
    original = hnet_module.dechunk

    def recording_dechunk(*a, **k):
        dechunk_outs.append(original(*a, **k))
        return dechunk_outs[-1]

    hnet_module.dechunk = recording_dechunk
    try:
        result = model(input_ids, **kwargs)
    finally:
        hnet_module.dechunk = original
        for h in hooks:
            h.remove()
    out["logits"] = result.logits
    for s, d in enumerate(reversed(dechunk_outs)):  # the innermost stage dechunks first
        out[f"stage{s}.dechunk_out"] = d
    for s, r in enumerate(result.routing):
        out[f"stage{s}.boundary_prob"] = r.boundary_prob
        out[f"stage{s}.boundary_mask"] = r.boundary_mask
        out[f"stage{s}.selected_probs"] = r.selected_probs
    return out


def tolerance_for(name: str, innermost: int) -> float:
    kind = name.split(".")[-1]
    if kind == "main_out" and name.startswith(f"stage{innermost}."):
        return TOLERANCE["inner_main_out"]
    return TOLERANCE[kind]


def valid_mask(name: str, golden: dict, innermost: int):
    """Padded goldens hold garbage at invalid positions: stage-s tensors use stage s's mask, except the
    main_out of a routing stage, which lives at stage s+1."""
    if name == "logits":
        return golden["stage0.mask"]
    s = int(name.split(".")[0][5:])
    if name.endswith("main_out") and s < innermost:
        s += 1
    return golden[f"stage{s}.mask"]


def compare(ours: dict, golden: dict, innermost: int, packed: bool) -> dict:
    errors = {}
    for name, ref in golden.items():
        if name.endswith(".mask") or name.endswith("cu_seqlens"):
            continue
        mine = ours[name]
        if packed:
            mine = mine.squeeze(0)
        else:
            keep = valid_mask(name, golden, innermost)
            mine, ref = mine[keep], ref[keep]
        assert mine.shape == ref.shape, f"{name}: {tuple(mine.shape)} vs golden {tuple(ref.shape)}"
        if ref.dtype == torch.bool:
            assert torch.equal(mine, ref), f"{name}: boundary decisions differ"
            continue
        err = (mine.float() - ref).abs().max().item()
        tol = tolerance_for(name, innermost)
        assert err <= tol, f"{name}: max |ours - official| = {err:.3g} > {tol:g}"
        errors[name] = err
    return errors


def error_table() -> str:
    """Largest |ours - official| per golden tensor, for every case and file."""
    lines = []
    for case in CASES:
        model, inputs = load_case(case)
        innermost = model.num_stages - 1
        for bf16 in (False, True):
            model.set_official_bf16_dechunk(bf16)
            for packed in (False, True):
                name = ("forward" if bf16 else "forward_dechunk_fp32").replace("forward", "forward_packed" if packed else "forward")
                kwargs = {"cu_seqlens": inputs["cu_seqlens"]} if packed else {"mask": inputs["mask"]}
                ours = run_with_intermediates(model, inputs["input_ids_packed" if packed else "input_ids"], **kwargs)
                errors = compare(ours, load_file(str(GOLDEN / case / f"{name}.safetensors")), innermost, packed)
                lines.append(f"{case} {name}: " + ", ".join(f"{k} {v:.2g}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


if __name__ == "__main__":
    print(error_table())
