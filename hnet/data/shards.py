"""Encode the split corpus once into memory-mapped shards, cached by everything that decides their content.

A cache entry is the folder CACHE/<kind>-<key>/ (CACHE: `cache_dir`, else $HNET_CACHE, else
~/.cache/hnet-lm) holding, for SPLIT in train and val:
  SPLIT.bin             the token ids of all documents back to back, without BOS (the loader adds it)
  SPLIT_offsets.npy     (num_docs + 1,) int64: document i is tokens[offsets[i]:offsets[i + 1]]
  SPLIT_doc_bytes.npy   (num_docs,) int64: raw bytes of each document, for bits per byte under BPE
  meta.json             token dtype, counts per split, and the inputs of the key

key = sha256 of: each source file's absolute path, size and mtime; the DataConfig fields that change
the content (CONTENT_FIELDS); the tokenizer's fingerprint (hash of its model file); FORMAT_VERSION.
An entry is written into a temporary folder and renamed into place when complete, and only a folder
under its final name is ever read, so a crash mid-write never leaves an entry that is later trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hnet.config import DataConfig
from hnet.data.run_tokenizer import tokenizer_and_split
from hnet.data.sources import Document, cache_root, source_files
from hnet.data.split import read_split
from hnet.data.tokenizers import BPETokenizer, ByteTokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONTENT_FIELDS = ("kind", "source", "text_field", "alphabet", "dna_lowercase", "dna_n_runs", "split",
                  "val_fraction", "val_bytes", "split_seed", "max_bytes", "tokenizer")


@dataclass
class TokenSplit:
    """One side of the split. `tokens` is memory-mapped; the loader reads documents through the offsets."""

    tokens: np.ndarray  # (num_tokens,) uint8 / uint16 / uint32
    doc_offsets: np.ndarray  # (num_docs + 1,) int64
    doc_bytes: np.ndarray  # (num_docs,) int64
    bos_id: int  # the loader prepends it to every document

    @property
    def num_docs(self) -> int:
        return len(self.doc_bytes)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def num_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / max(self.num_tokens, 1)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.doc_offsets[i]:self.doc_offsets[i + 1]]


@dataclass
class PreparedData:
    train: TokenSplit
    val: TokenSplit
    tokenizer: ByteTokenizer | BPETokenizer
    path: Path  # the cache entry


def prepare_data(cfg: DataConfig, tokenizer: ByteTokenizer | BPETokenizer | None = None,
                 split_docs: tuple[list[Document], list[Document]] | None = None) -> PreparedData:
    """Split and encode the corpus of `cfg`, or open the cached result of an identical earlier call.

    Without `tokenizer`, bytes runs use `ByteTokenizer(cfg.bos_id)`; bpe runs load the model at
    `tokenizer_path` (a .model file, or a folder holding tokenizer.model) or, if that folder holds
    none yet, train one into it on the training documents only. `split_docs`: the corpus as
    `read_split(cfg)` gives it, when the caller has read it already.
    """
    if tokenizer is None:
        tokenizer, split_docs = tokenizer_and_split(cfg)
    key_inputs = {
        "format": FORMAT_VERSION,
        "files": _file_keys(source_files(cfg)),
        "config": {name: getattr(cfg, name) for name in CONTENT_FIELDS},
        "tokenizer": tokenizer.fingerprint,
    }
    if cfg.val_path:  # only then, so that the entries of corpora split here keep their keys
        key_inputs["val_files"] = _file_keys(source_files(cfg, "val_path"))
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_root(cfg) / f"{cfg.kind}-{key}"
    remove_stale_temporaries(entry.parent)  # on a cache hit too
    if not entry.is_dir():
        _write_entry(entry, split_docs or read_split(cfg), tokenizer, key_inputs)
    data = _open_entry(entry, tokenizer)
    log.info("%s: train %d docs, %d tokens; val %d docs, %d tokens, %.3f bytes per token", entry, data.train.num_docs,
             data.train.num_tokens, data.val.num_docs, data.val.num_tokens, data.val.bytes_per_token)
    return data


def _write_entry(entry: Path, split_docs, tokenizer, key_inputs: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    # host and pid in the name: a later run can tell a killed writer's leftover from a live writer's work
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.{socket.gethostname()}.{os.getpid()}.", dir=entry.parent))
    try:
        meta = {"dtype": tokenizer.dtype.str, "vocab_size": tokenizer.vocab_size, **key_inputs}
        for name, docs in zip(("train", "val"), split_docs):
            meta[name] = _write_split(tmp / name, docs, tokenizer)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # else another process (another rank) finished the same entry first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary folders that writers on this host left when they were killed; return them."""
    host, removed = socket.gethostname(), []
    for tmp in root.glob(".*"):
        parts = tmp.name.rsplit(".", 2)  # ".ENTRY.HOST", pid, random suffix (a host name may hold dots)
        if len(parts) != 3 or not tmp.is_dir() or not parts[1].isdigit():
            continue
        if parts[0].endswith(f".{host}") and not _alive(int(parts[1])):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write_split(prefix: Path, docs: list[Document], tokenizer) -> dict:
    offsets, doc_bytes = [0], []
    with open(f"{prefix}.bin", "wb") as f:
        for doc in docs:
            ids = tokenizer.encode(doc.text).astype(tokenizer.dtype, copy=False)
            f.write(ids.tobytes())
            offsets.append(offsets[-1] + len(ids))
            doc_bytes.append(len(doc.text))
    np.save(f"{prefix}_offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(f"{prefix}_doc_bytes.npy", np.asarray(doc_bytes, dtype=np.int64))
    return {"num_docs": len(docs), "num_tokens": offsets[-1], "num_bytes": sum(doc_bytes)}


def _open_entry(entry: Path, tokenizer) -> PreparedData:
    meta = json.loads((entry / "meta.json").read_text())

    def split(name: str) -> TokenSplit:
        tokens = np.memmap(entry / f"{name}.bin", dtype=np.dtype(meta["dtype"]), mode="r",
                           shape=(meta[name]["num_tokens"],))
        return TokenSplit(tokens, np.load(entry / f"{name}_offsets.npy"), np.load(entry / f"{name}_doc_bytes.npy"),
                          tokenizer.bos_id)

    return PreparedData(split("train"), split("val"), tokenizer, entry)


def _file_keys(files) -> list:
    """What a cache key holds of each source file: its path, size and modification time."""
    return [[str(p.resolve()), (st := p.stat()).st_size, st.st_mtime_ns] for p in files]
