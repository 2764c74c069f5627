"""How a training run and the `hnet tokenizer train` command get their tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hnet.config import DataConfig, RunConfig
from hnet.data.sources import resolve_path
from hnet.data.split import read_split
from hnet.data.tokenizers import MODEL_NAME, BPETokenizer, ByteTokenizer, model_file, train_bpe


def tokenizer_for_run(cfg: DataConfig, run_dir: str | Path, is_main: bool = True, wait=None):
    """The run's tokenizer. A BPE model lives in RUN_DIR/tokenizer/tokenizer.model so that the run
    directory is self-contained: copied there from `tokenizer_path` if set, else trained there on the
    training split. Only the main process writes; every process then calls `wait` (a barrier) once."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer(cfg.bos_id)
    model = Path(run_dir) / "tokenizer" / MODEL_NAME
    if is_main and not model.is_file():  # a resumed run keeps the tokenizer it started with
        if cfg.tokenizer_path:
            source = model_file(resolve_path(cfg.tokenizer_path))
            if not source.is_file():
                raise ValueError(f"data.tokenizer_path: {source} does not exist")
            model.parent.mkdir(parents=True, exist_ok=True)
            tmp = model.with_name(f".{MODEL_NAME}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, model)
        else:
            train_bpe(read_split(cfg)[0], cfg.vocab_size, model.parent)
    if wait is not None:
        wait()
    return BPETokenizer(model)


def tokenizer_from_cli(args) -> None:
    """`hnet tokenizer train --data CONFIG --vocab-size N --out DIR`."""
    cfg = RunConfig.from_json(args.data).data
    train, val = read_split(cfg)
    tokenizer = train_bpe(train, args.vocab_size, args.out)
    val_tokens = sum(len(tokenizer.encode(d.text)) for d in val)
    print(f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces from {len(train)} training documents; "
          f"validation: {sum(len(d.text) for d in val) / max(val_tokens, 1):.3f} bytes per token")
