"""Two local lm-evaluation-harness tasks from the validation split of a run's corpus, for `hnet lm-eval`.

    python scripts/harness_tasks.py text/hnet_1stage_small --out tasks/books      # a preset, a run config or a run
    hnet lm-eval runs/hnet_1stage --tasks books_en_bpb,books_en_cloze --include-path tasks/books

For each CONFIG (a preset name, a run config file, or a run directory: its run.json), the validation
documents of its data split, exactly as training held them out, become:
- NAME_bpb: loglikelihood_rolling over each held-out document (its word and byte perplexity and bits per
  byte; the bits per byte equal `hnet eval RUN --data CONFIG` on the same split);
- NAME_cloze: multiple choice: a passage of a held-out document, then its true next sentence against three
  sentences from elsewhere in the same document, of about the same length (acc, acc_norm, acc_bytes).
  Whitespace runs become one space in passages and sentences, so that line wrapping tells no answer.

NAME is the corpus file's name (books_en for books_en.jsonl.gz) unless --name is given. The output folder
holds each task's YAML and jsonl and local_jsonl.py, the harness hook that reads the jsonl files beside
it, so the folder can move (to a GPU machine) and run without the network. `--set data.path=...` points a
config at the corpus where it lies on this machine; no path is built in.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from hnet.data import read_split
from hnet.training import load_run_config

# The harness hook written beside the tasks (tests/data/harness/local_jsonl.py is this text, checked by a test).
HOOK = '''"""lm-eval's `custom_dataset` hook for the task YAMLs beside it: each split read from a jsonl file named
relative to this folder, so the tasks run from any working directory and without the network."""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(files: dict, **_metadata) -> datasets.DatasetDict:
    splits = {}
    for split, name in files.items():
        rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
'''

# A sentence ends at . ! ? before whitespace, or at their CJK forms; closing quotes and brackets stay with it.
SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]?(?=\s|$)|[。！？][”’」』）]?")
MIN_SENTENCE, MAX_SENTENCE = 20, 300  # characters of a sentence that can be an answer
CHOICES = 4

BPB_YAML = """# Bits per byte of the held-out documents of {source}, each scored alone (scripts/harness_tasks.py).
task: {name}_bpb
custom_dataset: !function local_jsonl.load
dataset_kwargs:
  files:
    validation: {name}_bpb.jsonl
output_type: loglikelihood_rolling
validation_split: validation
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""

CLOZE_YAML = """# The true next sentence of a held-out document of {source} against three from elsewhere in it
# (scripts/harness_tasks.py). The harness scores " " + each choice after the passage.
task: {name}_cloze
custom_dataset: !function local_jsonl.load
dataset_kwargs:
  files:
    validation: {name}_cloze.jsonl
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_bytes
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def sentences(text: str) -> list[str]:
    """The text's sentences, whitespace runs made one space."""
    parts, start = [], 0
    for end in SENTENCE_END.finditer(text):
        parts.append(text[start:end.end()])
        start = end.end()
    parts.append(text[start:])
    return [s for s in (" ".join(part.split()) for part in parts) if s]


def cloze_items(doc_sentences: list[list[str]], count: int, context_chars: int, rng: random.Random) -> list[dict]:
    """Up to `count` items spread over the documents in turn: a passage of at most `context_chars` that ends
    a sentence, its next sentence, and three other sentences of the same document within a factor of 1.5
    of its length where there are enough (else the nearest in length); none next to the true one."""
    candidates = []
    for d, sents in enumerate(doc_sentences):
        answers = [i for i in range(1, len(sents)) if MIN_SENTENCE <= len(sents[i]) <= MAX_SENTENCE]
        rng.shuffle(answers)
        candidates.append(answers)
    items = []
    while len(items) < count and any(candidates):
        for d, answers in enumerate(candidates):
            if not answers or len(items) == count:
                continue
            i = answers.pop()
            sents = doc_sentences[d]
            true = sents[i]
            others = sorted({s for j, s in enumerate(sents) if abs(j - i) > 1 and s != true
                             and MIN_SENTENCE <= len(s) <= MAX_SENTENCE})
            if len(others) < CHOICES - 1:
                continue
            close = [s for s in others if 1 / 1.5 <= len(s) / len(true) <= 1.5]
            pool = close if len(close) >= CHOICES - 1 else sorted(others, key=lambda s: abs(len(s) - len(true)))[:10]
            choices = [true, *rng.sample(pool, CHOICES - 1)]
            rng.shuffle(choices)
            context, start = sents[i - 1], i - 1
            while start > 0 and len(sents[start - 1]) + 1 + len(context) <= context_chars:
                start -= 1
                context = sents[start] + " " + context
            items.append({"context": context[-context_chars:], "choices": choices, "label": choices.index(true),
                          "document": d, "sentence": i})
    return items


def write_tasks(config_spec: str, out: Path, overrides: list[str], name: str | None, cloze_count: int,
                context_chars: int, seed: int) -> tuple[str, int, int]:
    """Writes NAME_bpb and NAME_cloze for one config; returns (NAME, held-out documents, cloze items)."""
    spec = Path(config_spec)
    config = load_run_config(spec / "run.json" if spec.is_dir() else config_spec, overrides)
    _, val = read_split(config.data)
    texts = []
    for k, doc in enumerate(val):
        try:
            texts.append(doc.text.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"held-out document {k} of {config.data.path} is not UTF-8 ({e}); the harness takes "
                             "text") from None
    paths = config.data.path if isinstance(config.data.path, list) else [config.data.path]
    name = name or re.sub(r"\W", "_", Path(paths[0].removeprefix("package:")).name.split(".")[0])
    source = ", ".join(Path(p).name for p in paths)
    items = cloze_items([sentences(t) for t in texts], cloze_count, context_chars, random.Random(seed))
    if not items:
        raise ValueError(f"{config_spec}: the held-out documents hold too few sentences for a cloze item")
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / f"{name}_bpb.jsonl", [{"text": t} for t in texts])
    _write_jsonl(out / f"{name}_cloze.jsonl", items)
    (out / f"{name}_bpb.yaml").write_text(BPB_YAML.format(name=name, source=source))
    (out / f"{name}_cloze.yaml").write_text(CLOZE_YAML.format(name=name, source=source))
    (out / "local_jsonl.py").write_text(HOOK)
    return name, len(texts), len(items)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG",
                        help="a preset name, a run config file or a run directory")
    parser.add_argument("--out", required=True, help="folder for the task YAMLs, their jsonl files and the hook")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. data.path=PATH (every config)")
    parser.add_argument("--name", help="task name prefix (one config only; default: the corpus file's name)")
    parser.add_argument("--cloze-items", type=int, default=500)
    parser.add_argument("--context-chars", type=int, default=1000, help="at most this much passage before each answer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.name and len(args.configs) > 1:
        parser.error("--name names the tasks of one config")
    for spec in args.configs:
        name, docs, items = write_tasks(spec, Path(args.out), args.set, args.name, args.cloze_items,
                                        args.context_chars, args.seed)
        print(f"{spec}: {name}_bpb ({docs} held-out documents), {name}_cloze ({items} items) in {args.out}")
    print(f"run them: hnet lm-eval RUN --tasks <names> --include-path {args.out}")


if __name__ == "__main__":
    main()
