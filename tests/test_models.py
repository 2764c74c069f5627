"""The model's shape: official key names, weights in and out, packed vs padded, parameter groups."""

import json
from pathlib import Path

import pytest
import torch

from hnet import HNetConfig, HNetForCausalLM, load_checkpoint, load_model
from hnet.layers.cuda_graphs import use_cuda_graphs
from hnet.layers.isotropic import Isotropic
from hnet.ops.packed import bucketed_length, positions_in_sequence
from test_config import TINY

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
OFFICIAL = sorted((REFERENCE / "configs").glob("*.json"))


@pytest.mark.skipif(not OFFICIAL, reason="../shared/reference is not beside the repo")
@pytest.mark.parametrize("path", OFFICIAL, ids=lambda p: p.stem)
def test_meta_model_has_official_keys_shapes_and_count(path):
    model = HNetForCausalLM(HNetConfig.from_json(path), device="meta")
    official = json.loads((REFERENCE / "official_keys" / path.name).read_text())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in official["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == official["total_parameters"]


def tiny_model(seed=0, **changes):
    torch.manual_seed(seed)
    return HNetForCausalLM(HNetConfig.from_dict(dict(TINY, **changes)))


def staged_tiny_model(layout):
    """A tiny H-Net of 1 or 2 stages (as the layout nests), each stage's widths and attention set."""
    depth = 2 if len(layout[1]) == 1 else 3
    return tiny_model(arch_layout=layout, d_model=[64, 96, 128][:depth], d_intermediate=[0, 192, 256][:depth],
                      attn_cfg={"num_heads": [2] * depth, "rotary_emb_dim": [16] * depth, "window_size": [-1] * depth})


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    ids = torch.randint(0, 256, (2, 40))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.backbone.residual_proj.weight.dtype == torch.float32


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head.weight is model.embeddings.weight
    model.save_pretrained(tmp_path / "m")
    loaded = HNetForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embeddings.weight
    assert torch.equal(loaded.embeddings.weight, model.embeddings.weight)


def test_load_errors_list_missing_unexpected_and_misshapen_keys(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state.pop("backbone.routing_module.q_proj_layer.weight")
    state["backbone.extra.weight"] = torch.zeros(3)
    state["lm_head.weight"] = torch.zeros(256, 32)
    with pytest.raises(ValueError) as err:
        tiny_model().load_weights(state, source="ckpt")
    message = str(err.value)
    assert "missing (1): backbone.routing_module.q_proj_layer.weight" in message
    assert "unexpected (1): backbone.extra.weight" in message
    assert "lm_head.weight: checkpoint (256, 32) vs model (256, 64)" in message


def test_official_pt_checkpoint_loads(tmp_path):
    model = tiny_model()
    torch.save({k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v for k, v in model.state_dict().items()}, tmp_path / "m.pt")
    (tmp_path / "c.json").write_text(json.dumps(TINY))
    loaded = load_checkpoint(tmp_path / "m.pt", tmp_path / "c.json")
    assert loaded.backbone.residual_proj.weight.dtype == torch.float32
    ids = torch.randint(0, 256, (1, 30))
    # bf16 rounding of every weight moved the logits (largest ~0.6) by 1.7e-3 (1.4e-3 to 1.9e-3 over 4 seeds);
    # an all-zero model is 0.6 away, one tensor left at another seed's init mostly 0.5 or more
    assert (loaded(ids).logits - model(ids).logits).abs().max() < 5e-3


@pytest.mark.parametrize("layout", [["m2", ["T2"], "m2"], ["m1", ["t1m1", ["T1"], "m1t1"], "m1"], ["T2"]], ids=["1stage", "2stage", "isotropic"])
def test_padded_and_packed_give_the_same_logits(layout):
    depth = 1 if len(layout) == 1 else (2 if len(layout[1]) == 1 else 3)
    changes = dict(
        arch_layout=layout,
        d_model=[64, 128, 192][:depth],
        d_intermediate=[0, 256, 256][:depth] if depth > 1 else [256],
        attn_cfg={"num_heads": [2, 4, 4][:depth], "rotary_emb_dim": [16] * depth, "window_size": [-1, 7, -1][:depth]},
    )
    model = tiny_model(**changes)
    torch.manual_seed(1)
    lengths = [33, 50, 7]
    seqs = [torch.randint(0, 256, (n,)) for n in lengths]
    padded = torch.zeros(3, 50, dtype=torch.long)
    mask = torch.zeros(3, 50, dtype=torch.bool)
    for i, s in enumerate(seqs):
        padded[i, : len(s)], mask[i, : len(s)] = s, True
    cu = torch.tensor([0, 33, 83, 90], dtype=torch.int32)
    out_padded = model(padded, mask=mask)
    out_packed = model(torch.cat(seqs)[None], cu_seqlens=cu)
    assert (out_padded.logits[mask] - out_packed.logits[0]).abs().max() < 1e-4
    for rp, rk in zip(out_padded.routing[:1], out_packed.routing[:1]):
        assert torch.equal(rp.boundary_mask[mask], rk.boundary_mask[0])


def test_positions_in_sequence_restart_at_every_packed_sequence():
    assert positions_in_sequence(torch.tensor([0, 3, 4, 8]), 8).tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_bucketed_length_rounds_up_by_at_most_a_sixteenth():
    for n in [1, 127, 128, 129, 2047, 2048, 11000, 16385, 19218, 32767, 100_000]:
        b = bucketed_length(n)
        assert b >= n and b % 128 == 0 and (b - n) * 16 <= max(n, 16 * 127)
    assert bucketed_length(16385) == 17408 and bucketed_length(19218) == 19456 and bucketed_length(16384) == 16384


@pytest.mark.parametrize("layout", [["m2", ["T1m1"], "m2"], ["m1", ["t1m1", ["m1T1"], "m1t1"], "m1"]], ids=["1stage", "2stage"])
def test_bucketed_chunks_change_neither_outputs_nor_gradients(layout):
    """Every packed stack inside an H-Net (stage > 0) pads its chunks with one extra sequence of zeros (on
    CUDA by default) and cuts its output back: attention and the Mamba-2 scans reset per sequence, so real
    positions, the inner routing and every gradient see no difference."""
    depth = 2 if len(layout[1]) == 1 else 3
    model = staged_tiny_model(layout)
    inner_stacks = [m for m in model.modules() if isinstance(m, Isotropic) and m.length_varies]
    lengths = []  # (stack input, its first layer's input, stack output) per inner stack call
    for stack in inner_stacks:
        stack.register_forward_pre_hook(lambda _m, args: lengths.append([args[0].shape[1]]))
        stack.layers[0].register_forward_hook(lambda _m, args, _o: lengths[-1].append(args[0].shape[1]))
        stack.register_forward_hook(lambda _m, _a, out: lengths[-1].append(out.shape[1]))
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (1, 150))
    cu = torch.tensor([0, 40, 41, 150], dtype=torch.int32)
    results = []
    for bucket in (False, True):
        for stack in inner_stacks:
            stack.bucket_lengths = bucket
        lengths.clear()
        model.zero_grad()
        out = model(ids, cu_seqlens=cu)
        out.logits.square().mean().backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert len(lengths) == len(inner_stacks) == (1 if depth == 2 else 3)  # 2-stage: stage 1's encoder, decoder too
    assert all(n_layer == bucketed_length(n_in) and n_out == n_in for n_in, n_layer, n_out in lengths)
    assert any(n_layer > n_in for n_in, n_layer, _ in lengths)  # it did pad
    (plain, plain_grads), (padded, padded_grads) = results
    assert (plain.logits - padded.logits).abs().max() < 1e-5
    for r_plain, r_padded in zip(plain.routing, padded.routing, strict=True):
        assert torch.equal(r_plain.boundary_mask, r_padded.boundary_mask)
        assert (r_plain.boundary_prob - r_padded.boundary_prob).abs().max() < 1e-6
    assert plain_grads.keys() == padded_grads.keys()
    for name, g in plain_grads.items():
        assert (g - padded_grads[name]).abs().max() <= 1e-5 * max(1.0, g.abs().max().item()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("layout", [["m2", ["T2"], "m2"], ["m1", ["m1", ["T2"], "m1"], "m1"]])
def test_cuda_graphs_give_the_eager_steps(layout):
    """Three bf16 training steps on different bytes with every stack replayed as CUDA graphs (the first
    step captures them) give the eager steps' losses and gradients; the byte-level stacks' graphs are
    captured once and replayed."""
    torch.manual_seed(2)
    batches = [torch.randint(0, 256, (1, 3000), device="cuda") for _ in range(3)]
    cu = torch.tensor([0, 1000, 1001, 2500, 3000], dtype=torch.int32, device="cuda")
    runs = []
    for graphs in (True, False):  # a fresh model each (a capture wants parameters no eager step has used)
        model = staged_tiny_model(layout)
        use_cuda_graphs(model.cuda(), graphs)
        steps = []
        for ids in batches:
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                loss = model(ids, cu_seqlens=cu).logits.float().square().mean()
            loss.backward()
            steps.append((loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}))
        runs.append(steps)
        if graphs:
            byte_level = [m for m in model.modules() if isinstance(m, Isotropic) and not m.length_varies]
            assert len(byte_level) == 2 and all(len(m.run_layers.graphs) == 1 for m in byte_level)
    for (graph_loss, graph_grads), (eager_loss, eager_grads) in zip(*runs, strict=True):
        assert abs(eager_loss - graph_loss) <= 1e-3 * abs(eager_loss)
        assert eager_grads.keys() == graph_grads.keys()
        for name, g in eager_grads.items():
            assert (g - graph_grads[name]).abs().max() <= 1e-2 * max(1e-3, g.abs().max().item()), name


def test_param_groups_per_stage_multipliers_and_no_decay():
    model = tiny_model()
    groups = model.param_groups(lr=1e-3, weight_decay=0.1, lr_multipliers=[2.0, 1.0])
    by_name = {n: g for g in groups for n in g["names"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert by_name["embeddings.weight"]["lr"] == 2e-3 and by_name["lm_head.weight"]["lr"] == 2e-3
    assert by_name["backbone.main_network.main_network.layers.0.mixer.Wqkv.weight"]["lr"] == 1e-3
    assert by_name["backbone.main_network.pad_dimension"]["lr"] == 1e-3
    for name in ["backbone.residual_proj.bias", "backbone.encoder.layers.0.norm1.weight",
                 "backbone.encoder.layers.0.mixer.norm.weight", "backbone.encoder.rmsnorm.weight",
                 "backbone.encoder.layers.0.mixer.A_log", "backbone.encoder.layers.0.mixer.D"]:
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ["backbone.encoder.layers.0.mixer.in_proj.weight", "backbone.routing_module.q_proj_layer.weight"]:
        assert by_name[name]["weight_decay"] == 0.1, name


def test_bf16_load_keeps_fp32_residual_and_runs(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert loaded.embeddings.weight.dtype == torch.bfloat16
    assert loaded.backbone.residual_proj.weight.dtype == torch.float32
    ids = torch.randint(0, 256, (1, 40))
    # computed in bf16 too: 3.5e-3 from the float32 logits (largest ~0.6; 3.5e-3 to 3.7e-3 over 4 seeds, but a
    # boundary that bf16 flips moves them by ~0.5: this seed flips none)
    assert (loaded(ids).logits.float() - model(ids).logits).abs().max() < 1e-2
    assert torch.isfinite(tiny_model().to(torch.bfloat16)(ids).logits).all()  # a plain .to(dtype) runs too


def test_residual_proj_runs_as_the_official_linear():
    """residual_proj(h.to(fp32)): in fp32 from a bf16 h, and under autocast in autocast's dtype (the official
    module is a plain nn.Linear, which autocast casts like any other)."""
    stage = tiny_model().backbone
    with torch.no_grad():
        stage.residual_proj.weight.normal_()
    w, b = stage.residual_proj.weight, stage.residual_proj.bias
    h = torch.randn(2, 9, w.shape[1]).bfloat16()
    expected = torch.nn.functional.linear(h.float(), w, b)
    assert torch.equal(stage._residual(h), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = stage._residual(h)
    assert torch.equal(under_autocast, torch.nn.functional.linear(h, w.bfloat16(), b.bfloat16()).float())
    assert not torch.equal(under_autocast, expected)  # bf16 rounding: the two paths differ
