"""Deterministic train / validation split of a list of documents.

split="documents": whole documents are held out. The documents are visited in an order shuffled by
`split_seed` and moved to validation until they hold at least the target bytes (`val_bytes`, else
`val_fraction` of all bytes); at least one document goes to each side when there are two or more.

split="tail": the last floor(len * f) bytes of EVERY document are held out, where f is `val_fraction`
(or `val_bytes` / total bytes). This is for corpora of a few huge records, such as a genome's
chromosomes, where holding out whole records would leave too little or too odd a validation set.
A document too short to give one byte stays whole in training.

A source of a single document cannot be split by documents; it falls back to "tail" with a warning.

With `val_path` the corpus comes split by its maker (the code corpus is split by package): every document
of `path` trains and those of `val_path` validate; `max_bytes` then cuts each side.
"""

from __future__ import annotations

import warnings

import numpy as np

from hnet.config import DataConfig
from hnet.data.sources import Document, iter_documents


def read_split(cfg: DataConfig) -> tuple[list[Document], list[Document]]:
    """Read the whole corpus and split it: (train documents, validation documents)."""
    if cfg.val_path:
        train, val = list(iter_documents(cfg)), list(iter_documents(cfg, "val_path"))
        for field, docs in (("path", train), ("val_path", val)):
            if not docs:
                raise ValueError(f"data.{field}: {getattr(cfg, field)!r} yields no documents")
        return train, val
    return split_documents(list(iter_documents(cfg)), cfg)


def split_documents(docs: list[Document], cfg: DataConfig) -> tuple[list[Document], list[Document]]:
    if not docs:
        raise ValueError(f"data.path: {cfg.path!r} yields no documents")
    if cfg.split not in ("documents", "tail"):
        raise ValueError(f"data.split: unknown split {cfg.split!r}; expected documents or tail")
    total = sum(len(d.text) for d in docs)
    if cfg.split == "tail" or len(docs) == 1:
        if cfg.split != "tail":
            warnings.warn("data.split='documents' needs two or more documents; the source has one, so the "
                          "last val_fraction of it is held out instead (split='tail')", stacklevel=2)
        fraction = cfg.val_bytes / total if cfg.val_bytes is not None else cfg.val_fraction
        return _split_tails(docs, fraction)
    target = cfg.val_bytes if cfg.val_bytes is not None else cfg.val_fraction * total
    held, held_bytes = set(), 0
    for i in np.random.default_rng(cfg.split_seed).permutation(len(docs)).tolist():
        if (held and held_bytes >= target) or len(held) == len(docs) - 1:
            break
        held.add(i)
        held_bytes += len(docs[i].text)
    train = [d for i, d in enumerate(docs) if i not in held]
    val = [d for i, d in enumerate(docs) if i in held]  # source order, so evaluation reads naturally
    return train, val


def _split_tails(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_bytes / val_fraction: the held-out share {fraction:.3g} must be in (0, 1)")
    train, val = [], []
    for doc in docs:
        keep = len(doc.text) - int(len(doc.text) * fraction)
        train.append(Document(doc.text[:keep], {**doc.meta, "part": "head"}))
        if keep < len(doc.text):
            val.append(Document(doc.text[keep:], {**doc.meta, "part": "tail", "offset": keep}))
    if not val:
        raise ValueError(f"data: documents too short to hold out val_fraction {fraction:.3g} of each (split='tail')")
    return train, val
