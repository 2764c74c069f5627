"""What evaluation reads from a run directory: its config, metrics, tokenizer and data."""

from __future__ import annotations

import json
from pathlib import Path

from hnet.config import RunConfig, find_config, read_run_json


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory that a run, or one of its checkpoints, belongs to (None for a bare model)."""
    path = Path(path)
    for candidate in (path, path.parent.parent if path.parent.name == "checkpoints" else None):
        if candidate is not None and (candidate / "run.json").is_file():
            return candidate
    return None


def run_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_json(run_dir / "run.json")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: the run has no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_tokenizer(run_dir: Path, config: RunConfig):
    """The run's BPE tokenizer (RUN_DIR/tokenizer), or None for a byte-level run."""
    from hnet.data import BPETokenizer, run_tokenizer_model

    if config.data.tokenizer == "bytes":
        return None
    return BPETokenizer(run_tokenizer_model(run_dir))


def bytes_per_token(run_dir: Path, config: RunConfig) -> float:
    """Raw bytes per token of the run's training split (1 for bytes): read from the shard cache, which
    is built (and then cached) if it is not there."""
    from hnet.data import prepare_data

    tokenizer = run_tokenizer(run_dir, config)
    return 1.0 if tokenizer is None else prepare_data(config.data, tokenizer).train.bytes_per_token


def eval_documents(spec: str | Path) -> tuple[list[bytes], str]:
    """FILE_OR_CONFIG -> (documents, name): a run config's validation split, or all of a plain file."""
    from hnet.data import read_split

    path = Path(spec)
    if not path.is_file():
        try:
            path = find_config(spec)  # a preset by name
        except ValueError:
            raise ValueError(f"{spec}: data file does not exist (nor a preset name)") from None
    if path.suffix == ".json":
        data, path = read_run_json(path)
        if isinstance(data, dict) and "model" in data:
            val = read_split(RunConfig.from_dict(data, str(path)).data)[1]
            return [d.text for d in val], f"{path.stem}_val"
    text = path.read_bytes()
    if not text:
        raise ValueError(f"{path}: the data file is empty (0 bytes): nothing to evaluate")
    return [text], path.stem
