"""scripts/harness_tasks.py on a small corpus: the held-out documents as a rolling task, cloze items whose
answer is the true next sentence, and tasks that lm-eval runs from the folder written."""

import gzip
import json
import random

import torch

from hnet import HNetConfig, HNetForCausalLM
from hnet.config import DataConfig
from hnet.data import read_split

from tiny_runs import HNET_MODEL, REPO, load_script

NOUNS = ["king", "queen", "ship", "garden", "letter", "river", "soldier", "window", "winter", "bell"]
VERBS = ["finds", "loses", "watches", "remembers", "burns", "follows", "forgives", "builds"]


def book(seed: int, sentences: int = 60) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(sentences):
        words = [rng.choice(NOUNS) for _ in range(rng.randint(2, 9))]
        end = rng.choice([".", "!", "?"])
        lines.append(f"The {words[0]} {rng.choice(VERBS)} the {' and the '.join(words[1:])} on day {i}{end}")
    return "\n".join(" ".join(lines[k:k + 3]) for k in range(0, len(lines), 3))  # wrapped lines, as books are


def test_tasks_from_the_validation_split(tmp_path):
    script = load_script("harness_tasks")
    with gzip.open(tmp_path / "books.jsonl.gz", "wt") as f:
        for k in range(4):
            f.write(json.dumps({"title": f"book {k}", "text": book(k)}) + "\n")
    data = {"kind": "text", "source": "datasets", "path": str(tmp_path / "books.jsonl.gz"), "val_fraction": 0.4,
            "seq_len": 256}
    config = {"model": HNET_MODEL, "data": data}
    (tmp_path / "run.json").write_text(json.dumps(config))
    out = tmp_path / "tasks"
    script.main([str(tmp_path / "run.json"), "--out", str(out), "--cloze-items", "6", "--seed", "1"])

    assert sorted(p.name for p in out.iterdir()) == ["books_bpb.jsonl", "books_bpb.yaml", "books_cloze.jsonl",
                                                     "books_cloze.yaml", "local_jsonl.py"]
    assert (out / "local_jsonl.py").read_text() == (REPO / "tests/data/harness/local_jsonl.py").read_text()
    val = [d.text.decode() for d in read_split(DataConfig(**data))[1]]
    assert len(val) == 2
    assert [json.loads(line)["text"] for line in (out / "books_bpb.jsonl").read_text().splitlines()] == val

    items = [json.loads(line) for line in (out / "books_cloze.jsonl").read_text().splitlines()]
    assert len(items) == 6 and {item["document"] for item in items} == {0, 1}  # taken from each document in turn
    for item in items:
        sentences = script.sentences(val[item["document"]])
        i, choices = item["sentence"], item["choices"]
        assert choices[item["label"]] == sentences[i] and len(set(choices)) == 4
        assert item["context"].endswith(sentences[i - 1]) and "\n" not in item["context"]
        others = [c for c in choices if c != sentences[i]]
        assert all(c in sentences and abs(sentences.index(c) - i) > 1 for c in others)

    # the folder is a set of harness tasks
    from hnet.eval.harness import run_lm_eval

    torch.manual_seed(0)
    HNetForCausalLM(HNetConfig.from_dict(HNET_MODEL)).save_pretrained(tmp_path / "model")
    results, _, _ = run_lm_eval(tmp_path / "model", ["books_bpb", "books_cloze"], limit=2, include_path=out,
                                out=tmp_path / "lm_eval", progress=False)
    assert 7 < results["results"]["books_bpb"]["bits_per_byte,none"] < 10  # an untrained model: about 8
    assert 0 <= results["results"]["books_cloze"]["acc,none"] <= 1
