"""Bits per byte: a hand computation, windows that score every id once, BPE over raw bytes, bad inputs."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from hnet import HNetConfig, HNetForCausalLM
from hnet.cli import main
from hnet.data import Document, train_bpe
from hnet.eval.bpb import bits_per_byte, plan_windows, token_nll

from tiny_runs import HNET_MODEL

TEXT = "To be, or not to be, that is the question: café, naïve, 三国.\n".encode() * 3


def tiny_hnet() -> HNetForCausalLM:
    torch.manual_seed(0)
    return HNetForCausalLM(HNetConfig.from_dict(HNET_MODEL)).eval()


def windowed_transformer(vocab_size=256, window=-1) -> HNetForCausalLM:
    torch.manual_seed(0)
    return HNetForCausalLM(HNetConfig.from_dict({
        "arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": vocab_size,
        "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [window]},
    })).eval()


def test_hnet_eval_equals_a_hand_computation(tmp_path):
    model = tiny_hnet()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_bytes(TEXT)
    assert main(["eval", str(tmp_path / "model"), "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())

    ids = torch.tensor([[254, *TEXT]])
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1]).logits.double(), dim=-1)
    bits = -logp[0].gather(-1, ids[0, 1:, None]).sum().item() / math.log(2)
    assert result["bytes"] == len(TEXT)
    assert result["nll_bits"] == pytest.approx(bits, rel=1e-6)
    assert result["bpb"] == pytest.approx(bits / len(TEXT), rel=1e-6)
    assert result["model"] == str(tmp_path / "model") and result["data"] == str(tmp_path / "text.txt")


def test_hnet_eval_on_files_and_a_folder_gives_a_row_each_and_their_total(tmp_path, capsys):
    model = tiny_hnet()
    model.save_pretrained(tmp_path / "model")
    texts = {"corpus/a.txt": TEXT, "corpus/sub/b.txt": b"a second document\n" * 5, "corpus/.hidden": b"skipped",
             "c.txt": "三国演义".encode()}
    for name, text in texts.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(text)
    argv = ["eval", str(tmp_path / "model"), "--data", str(tmp_path / "corpus"), str(tmp_path / "c.txt"),
            "--window", "64", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["a.txt", "sub/b.txt", str(tmp_path / "c.txt")]
    docs = [texts["corpus/a.txt"], texts["corpus/sub/b.txt"], texts["c.txt"]]
    for row, doc in zip(result["rows"], docs):
        alone = bits_per_byte(model, [doc], window=64)
        assert row["bpb"] == pytest.approx(alone["bpb"], rel=1e-9) and row["bytes"] == alone["bytes"]
    whole = bits_per_byte(model, docs, window=64)
    assert result["bpb"] == pytest.approx(whole["bpb"], rel=1e-9) and result["bytes"] == whole["bytes"]
    assert result["documents"] == 3
    printed = capsys.readouterr().out
    assert "total" in printed and "sub/b.txt" in printed


@pytest.mark.parametrize("n,window,stride", [(2, 8, 4), (9, 8, 4), (10, 8, 8), (100, 16, 5), (101, 7, 1), (50, 64, 32)])
def test_windows_score_every_target_once(n, window, stride):
    scored, plan = [], plan_windows(n, window, stride)
    w = min(window, n - 1)
    for i, (start, skip) in enumerate(plan):
        assert 0 <= start and start + w <= n - 1
        scored += range(start + skip + 1, start + w + 1)
        if i > 0:
            assert skip >= w - stride  # every scored target after the first window has this much context
    assert scored == list(range(1, n))


def test_windows_equal_one_pass_when_the_context_fits():
    # One attention layer with a window of 8 keys: any 8 ids of context give the exact logits.
    model = windowed_transformer(window=8)
    ids = torch.tensor([254, *TEXT[:150]])
    whole = token_nll(model, ids, window=len(ids), stride=len(ids))
    windowed = token_nll(model, ids, window=32, stride=16, batch_size=3)
    assert not torch.isnan(windowed).any()
    torch.testing.assert_close(windowed, whole, rtol=1e-5, atol=1e-5)


def test_bpe_bpb_is_token_nll_over_raw_bytes(tmp_path):
    tokenizer = train_bpe([Document(TEXT * 20)], 300, tmp_path / "tok")
    text = TEXT + b"\xff unseen \x00 bytes"  # bytes never seen in training fall back to byte pieces
    model = windowed_transformer(vocab_size=tokenizer.vocab_size)
    result = bits_per_byte(model, [text], tokenizer, window=4096)

    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(text).tolist()]])
    with torch.no_grad():
        nll = F.cross_entropy(model(ids[:, :-1]).logits[0].double(), ids[0, 1:], reduction="sum").item()
    assert result["tokens"] == ids.shape[1] - 1 < len(text)
    assert result["bytes"] == len(text)
    assert result["bpb"] == pytest.approx(nll / (math.log(2) * len(text)), rel=1e-6)


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    tiny_hnet().save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_bytes(TEXT)
    cases = [
        (["eval", str(tmp_path / "no_run"), "--data", str(tmp_path / "text.txt")], "no_run"),
        (["eval", str(tmp_path / "model"), "--data", str(tmp_path / "missing.txt")], "missing.txt"),
        (["compare", str(tmp_path / "no_run"), "--out", str(tmp_path / "cmp")], "no_run"),
        (["compare", str(tmp_path / "model"), "--out", str(tmp_path / "cmp")], "not a run directory"),
    ]
    for argv, named in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err


def uniform(model: HNetForCausalLM) -> HNetForCausalLM:
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution over the vocabulary
    return model


def test_uniform_model_scores_exactly_8_bits_per_byte():
    result = bits_per_byte(uniform(tiny_hnet()), [TEXT, b"\x00\xff" * 50], window=64)
    assert result["bpb"] == pytest.approx(8.0, abs=1e-6)  # log-softmax runs in float32


def test_uniform_bpe_model_is_scored_per_byte_not_per_token(tmp_path):
    tokenizer = train_bpe([Document(TEXT * 20)], 300, tmp_path / "tok")
    result = bits_per_byte(uniform(windowed_transformer(vocab_size=tokenizer.vocab_size)), [TEXT], tokenizer)
    per_token = math.log2(tokenizer.vocab_size)
    assert result["bpb"] == pytest.approx(per_token * result["tokens"] / len(TEXT), rel=1e-6)
    assert result["bpb"] < per_token  # tokens cover several bytes each


def test_run_errors_name_what_is_wrong(tmp_path, capsys):
    from hnet.data import train_bpe as train

    run = tmp_path / "run"
    (tmp_path / "text.txt").write_bytes(TEXT)
    (tmp_path / "empty.txt").write_bytes(b"")
    model = windowed_transformer(vocab_size=400)
    config = {"model_type": "isotropic", "model": model.config.to_dict(),
              "data": {"path": str(tmp_path / "text.txt"), "tokenizer": "bpe", "vocab_size": 400}}
    run.mkdir()
    (run / "run.json").write_text(json.dumps(config))
    cases = [
        (["eval", str(run), "--data", str(tmp_path / "text.txt")], "no checkpoint"),
    ]
    model.save_pretrained(run / "checkpoints" / "step_000001")
    train([Document(TEXT * 20)], 300, run / "tokenizer")  # a tokenizer that does not match the model
    cases += [
        (["eval", str(run), "--data", str(tmp_path / "empty.txt")], "empty.txt"),
        (["eval", str(run), "--data", str(tmp_path / "text.txt")], "do not belong together"),
    ]
    (run / "checkpoints").rename(tmp_path / "ckpt")
    assert main(cases[0][0]) == 2 and cases[0][1] in capsys.readouterr().err
    (tmp_path / "ckpt").rename(run / "checkpoints")
    for argv, named in cases[1:]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err


def test_a_run_scored_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, capsys):
    """Same vocabulary size, other pieces: the ids would mean other bytes and the bpb would be silently wrong."""
    run = tmp_path / "run"
    (tmp_path / "text.txt").write_bytes(TEXT)
    own = train_bpe([Document(TEXT * 20)], 300, tmp_path / "own")
    other = train_bpe([Document(b"the quick brown fox jumps over the lazy dog, again and again. " * 60)], 300,
                      tmp_path / "other")
    assert own.vocab_size == other.vocab_size and own.fingerprint != other.fingerprint
    model = windowed_transformer(vocab_size=own.vocab_size)
    config = {"model_type": "isotropic", "model": model.config.to_dict(),
              "data": {"path": str(tmp_path / "text.txt"), "tokenizer": "bpe", "tokenizer_path": str(own.path)}}
    run.mkdir()
    (run / "run.json").write_text(json.dumps(config))
    checkpoint = run / "checkpoints" / "step_000001"
    model.save_pretrained(checkpoint)
    (checkpoint / "state.json").write_text(json.dumps({"step": 1, "tokenizer": own.fingerprint}))
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer.model").write_bytes(other.path.read_bytes())
    assert main(["eval", str(run), "--data", str(tmp_path / "text.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer.model: not the tokenizer that" in err and "step_000001" in err
    assert not (run / "eval").exists()
    (run / "tokenizer" / "tokenizer.model").write_bytes(own.path.read_bytes())
    assert main(["eval", str(run), "--data", str(tmp_path / "text.txt")]) == 0
