"""lm-evaluation-harness on our models: local tasks end to end through simple_evaluate on a tiny trained run,
checked against `hnet eval` and against log-likelihoods computed by hand; the BPE baseline per byte;
generation with stop strings; the error when the extra is missing."""

import csv
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hnet import HNetConfig, HNetForCausalLM
from hnet.cli import main
from hnet.data import Document, train_bpe
from hnet.eval.bpb import bits_per_byte
from hnet.eval.run_files import EvalModel

from tiny_runs import HNET_MODEL, REPO

TASKS = REPO / "tests" / "data" / "harness"  # local tasks: YAMLs over jsonl files beside them


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def instance(kind: str, *args):
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, 0)


def random_byte_model() -> EvalModel:
    torch.manual_seed(0)
    return EvalModel(HNetForCausalLM(HNetConfig.from_dict(HNET_MODEL)).eval(), None, 254, 128, Path("."))


def bpe_model(tmp_path) -> EvalModel:
    text = "To be, or not to be, that is the question: café, naïve.\n".encode() * 30
    tokenizer = train_bpe([Document(text)], 300, tmp_path / "tok")
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict({
        "arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": tokenizer.vocab_size,
        "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}})).eval()
    return EvalModel(model, tokenizer, tokenizer.bos_id, 64, tmp_path)


def hand_logprob(model, context: str, continuation: str) -> float:
    """log p(continuation | BOS + context) over the UTF-8 bytes, from one forward pass in float64."""
    context_ids, continuation_ids = [254, *context.encode()], list(continuation.encode())
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1]).logits[0].double(), dim=-1)
    return logp[len(context_ids) - 1:].gather(-1, torch.tensor(continuation_ids)[:, None]).sum().item()


@pytest.mark.slow
def test_local_tasks_end_to_end_agree_with_hnet_eval_and_a_hand_computation(tiny_trained_hnet, tmp_path):
    run = Path(shutil.copytree(tiny_trained_hnet, tmp_path / "run"))
    assert main(["lm-eval", str(run), "--tasks", "hnet_test_mc,hnet_test_rolling", "--include-path", str(TASKS),
                 "--batch-size", "3", "--log-samples"]) == 0
    [results_path] = sorted((run / "lm_eval").glob("results_*.json"))
    results = json.loads(results_path.read_text())["results"]
    assert results_path.with_suffix(".md").read_text().count("hnet_test_") >= 2

    # rolling: the harness's bits per byte is `hnet eval`'s on the same texts (one file each)
    docs = [d["text"] for d in read_jsonl(TASKS / "paragraph.jsonl")]
    assert len(docs[0].encode()) > 2 * 128  # longer than the run's window: read in windows
    for i, doc in enumerate(docs):
        (tmp_path / "texts").mkdir(exist_ok=True)
        (tmp_path / "texts" / f"doc{i}.txt").write_bytes(doc.encode())
    assert main(["eval", str(run), "--data", str(tmp_path / "texts"), "--out", str(tmp_path / "eval.json")]) == 0
    ours = json.loads((tmp_path / "eval.json").read_text())
    assert [r["name"] for r in ours["rows"]] == ["doc0.txt", "doc1.txt"]
    rolling = results["hnet_test_rolling"]
    assert rolling["bits_per_byte,none"] == pytest.approx(ours["bpb"], abs=1e-6)
    assert rolling["byte_perplexity,none"] == pytest.approx(2 ** ours["bpb"], rel=1e-6)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    assert rolling["word_perplexity,none"] == pytest.approx(math.exp(ours["nll_bits"] * math.log(2) / words), rel=1e-5)

    # multiple choice: accuracy is the argmax of our own log-likelihoods, each computed alone
    import hnet

    model = hnet.load_model(run).eval()
    items = read_jsonl(TASKS / "mc.jsonl")
    lls = [[hand_logprob(model, d["context"], " " + c) for c in d["choices"]] for d in items]  # " ": the delimiter

    def accuracy(length):  # the share of items whose best choice by ll / length(choice) is the label
        return sum(max(range(len(ll)), key=lambda j: ll[j] / length(d["choices"][j])) == d["label"]
                   for ll, d in zip(lls, items)) / len(items)

    acc = accuracy(lambda c: 1)
    assert results["hnet_test_mc"]["acc,none"] == acc
    assert results["hnet_test_mc"]["acc_norm,none"] == accuracy(len)
    assert results["hnet_test_mc"]["acc_bytes,none"] == accuracy(lambda c: len(c.encode()))
    [samples_path] = (run / "lm_eval").glob("samples_hnet_test_mc_*.jsonl")
    samples = sorted(read_jsonl(samples_path), key=lambda s: s["doc_id"])
    for sample, expected in zip(samples, lls):
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-4)

    # `hnet compare` shows the harness results it finds in the run
    assert main(["compare", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "## lm-eval" in (tmp_path / "report" / "report.md").read_text()
    [row] = list(csv.DictReader(open(tmp_path / "report" / "harness.csv")))
    assert float(row["hnet_test_rolling/bits_per_byte"]) == pytest.approx(ours["bpb"], abs=1e-4)
    assert float(row["hnet_test_mc/acc"]) == acc


def test_registered_as_hnet_built_from_a_model_args_string_and_a_task_file(tiny_trained_hnet, tmp_path):
    from lm_eval.api.registry import get_model

    from hnet.eval.harness import HNetLM, run_lm_eval

    assert get_model("hnet") is HNetLM
    lm = HNetLM.create_from_arg_string(f"pretrained={tiny_trained_hnet},window=64,packing=false",
                                       {"batch_size": 2, "device": "cpu"})
    assert (lm.window, lm.stride, lm.packing, lm.batch_size) == (64, 32, False, 2)
    # a task named by its YAML file, no include path: lm-eval's own task index is not needed
    results, json_path, md_path = run_lm_eval(tiny_trained_hnet, [str(TASKS / "hnet_test_mc.yaml")], limit=2,
                                              out=tmp_path / "out", progress=False)
    assert results["results"]["hnet_test_mc"]["sample_len"] == 2
    assert json_path.parent == md_path.parent == tmp_path / "out"
    assert json.loads(json_path.read_text())["config"]["model_args"]["pretrained"] == str(tiny_trained_hnet)


def test_a_bpe_model_scores_the_same_bytes_through_its_tokenizer(tmp_path):
    from hnet.eval.harness import HNetLM

    loaded = bpe_model(tmp_path)
    lm = HNetLM(loaded=loaded, progress=False)
    tok = loaded.tokenizer
    for context, continuation in [("To be, or not to be,", " that is"), ("café ", "naïve"), ("", "question"),
                                  ("the question: caf", "é, naïve")]:
        head, tail = lm.request_ids(context, continuation)
        assert head[0] == tok.bos_id
        assert tok.decode(head[1:]) + tok.decode(tail) == (context + continuation).encode()
        moved = len(context) - len(context.rstrip())
        assert tok.decode(tail) == (context[len(context) - moved:] + continuation).encode()  # trailing spaces move
    # rolling: BOS + the text's tokens in hnet eval's windows, i.e. its bits per byte
    docs = ["To be, or not to be, that is the question. " * 6, "naïve café"]
    lls = lm.loglikelihood_rolling([instance("loglikelihood_rolling", d) for d in docs])
    expected = bits_per_byte(loaded.model, [d.encode() for d in docs], tok, window=64)
    assert len(tok.encode(docs[0].encode())) > 64  # the long text is read in windows
    assert -sum(lls) / math.log(2) == pytest.approx(expected["nll_bits"], rel=1e-6)


def test_generate_until_stops_before_the_first_stop_string(tmp_path):
    from hnet.eval.harness import HNetLM

    loaded = random_byte_model()
    lm = HNetLM(loaded=loaded, batch_size=2, progress=False)
    contexts = ["ROMEO: ", "To be, or not to be"]
    free = [loaded.model.generate([c.encode()], 24, temperature=0)[0] for c in contexts]
    ascii_byte = next(b for b in free[0][3:] if 32 <= b < 127)
    stop = chr(ascii_byte)
    kwargs = {"until": [stop, "never appears \u2603"], "max_gen_toks": 24, "do_sample": False}
    out = lm.generate_until([instance("generate_until", c, dict(kwargs)) for c in contexts])
    for text, full in zip(out, free):
        decoded = full.decode("utf-8", errors="replace")
        cut = decoded.split(stop, 1)[0]
        assert text == cut and stop not in text
    # a BPE model's stop strings are found in its decoded text
    bpe = HNetLM(loaded=bpe_model(tmp_path), progress=False)
    [free_text] = bpe.generate_until([instance("generate_until", "To be", {"until": [], "max_gen_toks": 12})])
    stop = free_text[len(free_text) // 2:len(free_text) // 2 + 1]
    [text] = bpe.generate_until([instance("generate_until", "To be", {"until": [stop], "max_gen_toks": 12})])
    assert text == free_text.split(stop, 1)[0]


def test_generation_ends_at_bos(tmp_path):
    """BOS begins the next document: a row that samples it has ended its text (and BOS is not in it)."""
    from hnet.eval.harness import HNetLM

    for loaded in (random_byte_model(), bpe_model(tmp_path)):
        lm = HNetLM(loaded=loaded, progress=False)
        [first] = lm.generate_until([instance("generate_until", "To be", {"until": ["never"], "max_gen_toks": 1})])
        favour = torch.zeros(loaded.model.lm_head.out_features)
        favour[loaded.bos_id] = 1e4
        calls = []  # the prefill gives the first new id as it was; every step after it gives BOS

        def bos_after_the_first(module, args, out):
            calls.append(1)
            return out + favour if len(calls) > 1 else out

        loaded.model.lm_head.register_forward_hook(bos_after_the_first)
        [text] = lm.generate_until([instance("generate_until", "To be", {"until": ["never"], "max_gen_toks": 10})])
        assert text == first and len(calls) == 2  # one id, then BOS: the row stopped there


def test_without_lm_eval_the_command_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    assert main(["lm-eval", str(tmp_path), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'hnet-lm[eval]'" in err


def test_generate_until_keeps_the_end_of_a_long_context():
    """A context longer than the window leaves room for the output by dropping its front, not its end."""
    from hnet.eval.harness import HNetLM
    from hnet.generation import stream_ids

    loaded = random_byte_model()
    lm = HNetLM(loaded=loaded, window=16, progress=False)
    context = "To be, or not to be, that is the question"
    [text] = lm.generate_until([instance("generate_until", context, {"until": [], "max_gen_toks": 4})])
    tail = [254, *context.encode()][-(16 - 4):]  # the last window - max_gen_toks ids
    ids = [i for [i] in stream_ids(loaded.model, [tail], 4, temperature=0.0)]
    assert text == bytes(ids).decode("utf-8", errors="replace")


def test_generate_until_samples_when_asked():
    from hnet.eval.harness import HNetLM

    lm = HNetLM(loaded=random_byte_model(), progress=False)
    greedy = lm.generate_until([instance("generate_until", "To be", {"until": [], "max_gen_toks": 16})])
    torch.manual_seed(0)
    sampled = lm.generate_until([instance("generate_until", "To be",
                                          {"until": [], "max_gen_toks": 16, "do_sample": True, "temperature": 1.0})])
    assert sampled != greedy
