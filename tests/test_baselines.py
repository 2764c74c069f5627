"""Baselines: model_type checks, fixed chunkers (space, BPE starts) through the training loop, the
matched-FLOPs helper and the presets."""

import json
from pathlib import Path

import pytest
import torch

from hnet import RunConfig, load_model
from hnet.chunking.fixed import space_boundaries, token_start_boundaries
from hnet.data import Document, resolve_path, train_bpe
from hnet.eval.baselines import KINDS, size_baseline
from hnet.eval.flops import flops_per_byte
from hnet.models import HNetFixedForCausalLM
from hnet.training import train
from tiny_runs import HNET_MODEL, TRANSFORMER_MODEL, tiny_fixed, tiny_hnet, tiny_transformer

CONFIGS = Path(__file__).resolve().parents[1] / "hnet" / "configs"


def chunks_of(text: bytes, mask) -> list[bytes]:
    """The chunks a boundary mask (1, len(text)) cuts the text into."""
    cuts = sorted({0, *torch.nonzero(mask[0]).flatten().tolist()}) + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def test_space_rule_on_handmade_text():
    text = "Hi there,  world!\n(x2) café 三国".encode()
    ids = torch.tensor([[254, *text]])
    chunks = chunks_of(text, space_boundaries(ids)[:, 1:])
    # A run of space-like bytes starts one chunk: " 三" (a space, then the lead byte of 三) is one run.
    assert chunks == [b"Hi", b" there", b",  world", b"!\n(x2", b") caf", "é".encode(), " 三".encode(), "国".encode()]
    assert space_boundaries(ids)[0, 0]  # BOS starts the sequence


def test_space_rule_restarts_at_every_packed_sequence():
    ids = torch.tensor([[254, *b"ab cd", 254, *b"ef"]])
    mask = space_boundaries(ids, cu_seqlens=torch.tensor([0, 3, 6, 9]))
    assert torch.nonzero(mask[0]).flatten().tolist() == [0, 3, 6]


def test_bpe_start_rule_cuts_at_every_token(tmp_path):
    text = b"the theme of the thesis, then the others."
    tokenizer = train_bpe([Document(text * 40)], 300, tmp_path / "tok")
    ids = torch.tensor([list(text)])
    pieces = [tokenizer.decode([t]) for t in tokenizer.encode(text)]
    assert chunks_of(text, token_start_boundaries(ids, tokenizer.encode, tokenizer.token_bytes())) == pieces
    assert len(pieces) < len(text) // 2  # merged tokens, so the test means something


@pytest.mark.parametrize("change, field", [
    ({"model_type": "isotropic"}, "'model.arch_layout'"),
    ({"model": TRANSFORMER_MODEL}, "'model.arch_layout'"),
    ({"model_type": "hnet_fixed"}, "'train.ratio_loss_weight'"),
    ({"model_type": "hnet_fixed", "fixed_boundaries": "bpe", "train": {"ratio_loss_weight": 0}}, "'fixed_tokenizer_path'"),
    ({"model_type": "hnet_fixed", "fixed_boundaries": "words", "train": {"ratio_loss_weight": 0}}, "'fixed_boundaries'"),
    ({"data": {"tokenizer": "bpe"}}, "'data.tokenizer'"),
    ({"model": {**HNET_MODEL, "vocab_size": 512}}, "'model.vocab_size'"),
])
def test_model_type_errors_name_the_field_and_file(tmp_path, change, field):
    data = tiny_hnet(tmp_path)
    for key, value in change.items():
        data[key] = {**data[key], **value} if key in ("data", "train") else value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        RunConfig.from_json(path)
    assert field in str(error.value) and str(path) in str(error.value)


def test_bpe_vocab_must_match_the_tokenizer(tmp_path):
    tokenizer = train_bpe([Document(b"a rose is a rose " * 200)], 270, tmp_path / "tok")
    data = tiny_transformer(tmp_path)
    data["data"].update(tokenizer="bpe", vocab_size=270)
    with pytest.raises(ValueError, match="'model.vocab_size'.*256.*270"):
        RunConfig.from_dict(data, "run.json")
    data["data"]["tokenizer_path"] = str(tokenizer.path)
    data["model"]["vocab_size"] = 300
    with pytest.raises(ValueError, match=r"'model.vocab_size' has value 300.*270 ids"):
        train(RunConfig.from_dict(data), tmp_path / "run", progress=False)


def test_fixed_space_model_trains_and_reloads(tmp_path):
    result = train(RunConfig.from_dict(tiny_fixed(tmp_path, max_steps=4, eval_every=4, checkpoint_every=4)),
                   tmp_path / "run", progress=False)
    assert result.val_bpb < result.initial_val_bpb
    model = load_model(tmp_path / "run")
    assert isinstance(model, HNetFixedForCausalLM) and model.routing.rule == "space"
    ids = torch.tensor([[254, *b"To be, or not to be: that is the question."]])
    out = model(ids)
    assert torch.equal(out.routing[0].boundary_mask, space_boundaries(ids))
    assert out.routing[0].boundary_prob.requires_grad  # p is still learned: it weights the dechunk


def test_fixed_bpe_model_trains_and_reloads(tmp_path):
    text = resolve_path("package:tinyshakespeare.txt").read_bytes()[:40000]
    tokenizer = train_bpe([Document(text)], 400, tmp_path / "tok")
    config = tiny_fixed(tmp_path, "bpe", tokenizer.path, max_steps=3, eval_every=3, checkpoint_every=3)
    train(RunConfig.from_dict(config), tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    assert model.routing.rule == "bpe" and model.tokenizer_file.read_bytes() == tokenizer.path.read_bytes()
    ids = torch.tensor([[254, *b"Now is the winter of our discontent"]])
    assert torch.equal(model(ids).routing[0].boundary_mask,
                       token_start_boundaries(ids, tokenizer.encode, tokenizer.token_bytes()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", ["text/hnet_1stage_tiny", "dna/hnet_1stage_small"])
def test_sized_baseline_is_within_10_percent(kind, preset):
    config = RunConfig.from_json(CONFIGS / f"{preset}.json")
    target = flops_per_byte(config.model, config.data.seq_len, config.train.ratio_targets)
    baseline = size_baseline(kind, target, config.data.seq_len, config.model)
    assert baseline.num_stages == 1
    assert flops_per_byte(baseline, config.data.seq_len) == pytest.approx(target, rel=0.10)


def test_sized_bpe_baseline_counts_per_byte():
    config = RunConfig.from_json(CONFIGS / "text" / "hnet_1stage_tiny.json")
    target = flops_per_byte(config.model, 512, [6.0])
    baseline = size_baseline("transformer", target, 160, config.model, vocab_size=2048, bytes_per_token=3.2)
    assert baseline.vocab_size == 2048
    assert flops_per_byte(baseline, 160, (), 3.2) == pytest.approx(target, rel=0.10)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_presets_load_and_byte_baselines_match_their_hnet(path):
    config = RunConfig.from_json(path)
    name = path.stem.rsplit("_", 1)[0]
    if name in ("transformer", "mamba2", "hybrid"):
        hnet = RunConfig.from_json(path.with_name(path.name.replace(name, "hnet_1stage")))
        target = flops_per_byte(hnet.model, hnet.data.seq_len, hnet.train.ratio_targets)
        assert flops_per_byte(config.model, config.data.seq_len) == pytest.approx(target, rel=0.10)
        assert config.data == hnet.data and config.train.batch_size == hnet.train.batch_size
