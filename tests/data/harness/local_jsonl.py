"""lm-eval's `custom_dataset` hook for the task YAMLs beside it: each split read from a jsonl file named
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
