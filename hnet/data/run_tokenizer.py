"""How a training run and the `hnet tokenizer train` command get their tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hnet.config import TOKENIZERS, DataConfig
from hnet.data.sources import resolve_path
from hnet.data.split import read_split
from hnet.data.tokenizers import MODEL_NAME, BPETokenizer, ByteTokenizer, model_file, train_bpe


def run_tokenizer_model(run_dir: str | Path) -> Path:
    """Where a run keeps its BPE model, so that the run directory is self-contained."""
    return Path(run_dir) / "tokenizer" / MODEL_NAME


def tokenizer_for_run(cfg: DataConfig, run_dir: str | Path, is_main: bool = True, wait=None):
    """The run's tokenizer. A BPE model lives in RUN_DIR/tokenizer/tokenizer.model so that the run
    directory is self-contained: copied there from `tokenizer_path` if set, else trained there on the
    training split. Only the main process writes; every process then calls `wait` (a barrier) once."""
    return tokenizer_and_split(cfg, run_dir, is_main, wait)[0]


def tokenizer_and_split(cfg: DataConfig, run_dir: str | Path | None = None, is_main: bool = True, wait=None):
    """(`tokenizer_for_run`, the split documents if training the tokenizer read them, else None): the shards
    reuse them rather than read the corpus again. Without `run_dir` the model's place is `tokenizer_path`
    itself: loaded from there, or trained there if that folder holds none."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer(cfg.bos_id), None
    if cfg.tokenizer not in TOKENIZERS:
        raise ValueError(f"data.tokenizer: unknown tokenizer {cfg.tokenizer!r}; expected one of {', '.join(TOKENIZERS)}")
    if run_dir is not None:
        model, source = run_tokenizer_model(run_dir), cfg.tokenizer_path
    elif cfg.tokenizer_path:
        model, source = model_file(resolve_path(cfg.tokenizer_path)), None
    else:
        raise ValueError("data.tokenizer_path: a bpe run needs a place for its tokenizer (the training loop gives RUN_DIR/tokenizer)")
    split_docs = None
    # A resumed run keeps the tokenizer it started with. Only a folder is filled: a named .model file
    # must exist, and BPETokenizer says so if it does not.
    if is_main and not model.is_file() and model.name == MODEL_NAME:
        if source:
            _copy_model(model_file(resolve_path(source)), model)
        else:
            split_docs = read_split(cfg)
            train_bpe(split_docs[0], cfg.vocab_size, model.parent)
    if wait is not None:
        wait()
    return BPETokenizer(model), split_docs


def _copy_model(source: Path, model: Path) -> None:
    if not source.is_file():
        raise ValueError(f"data.tokenizer_path: {source} does not exist")
    model.parent.mkdir(parents=True, exist_ok=True)
    tmp = model.with_name(f".{MODEL_NAME}.{os.getpid()}.tmp")  # renamed when whole: no half-written model
    shutil.copyfile(source, tmp)
    os.replace(tmp, model)
