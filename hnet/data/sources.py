"""Read a corpus as a stream of documents of raw bytes.

Three sources, chosen by `DataConfig.source`:
- text: every file is one document, read as raw bytes and never decoded (a `.gz` file is gunzipped);
- datasets: jsonl / json / parquet / csv rows through Hugging Face `datasets`, column `text_field`
  encoded as UTF-8;
- fasta: one record is one document, the header kept in `meta`, line breaks removed.

FASTA alphabets (`DataConfig.alphabet`, default by `kind`):
- "dna": A C G T N plus the IUPAC ambiguity codes R Y K M S W B D H V. Real assemblies carry them
  (TAIR10 has K, Y and S in Chr2), so refusing them would refuse real genomes; they are rare enough to
  cost nothing. Give `alphabet="ACGTN"` to refuse them. Lower-case (soft-masked) bases are accepted
  and folded to upper case or kept, as `dna_lowercase` says; `dna_n_runs` then keeps, collapses or
  drops runs of N.
- "protein": the 20 standard amino acids, B X Z J U O and the stop `*`, upper case only.
- any other string: exactly those letters.
With `kind="text"` and no alphabet, FASTA sequences are not checked.
"""

from __future__ import annotations

import gzip
import zlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hnet.config import DataConfig

ALPHABETS = {
    "dna": "ACGTN" + "RYKMSWBDHV",
    "protein": "ACDEFGHIKLMNPQRSTVWY" + "BXZJUO*",
}
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".faa")
DATASETS_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"


@dataclass
class Document:
    text: bytes
    meta: dict = field(default_factory=dict)


def resolve_path(path: str) -> Path:
    """A config path: "package:NAME" is NAME under the package's `hnet/samples/`, else a plain path."""
    if path.startswith("package:"):
        return SAMPLES_DIR / path[len("package:"):]
    return Path(path).expanduser()


def cache_root(cfg: DataConfig) -> Path:
    """Where prepared data lives: `cache_dir`, else $HNET_CACHE, else ~/.cache/hnet-lm."""
    root = cfg.cache_dir or os.environ.get("HNET_CACHE") or "~/.cache/hnet-lm"
    return Path(root).expanduser()


def _base_suffix(path: Path) -> str:
    """'.jsonl' for books.jsonl.gz: the format under an optional gzip layer."""
    name = path.name.lower()
    return Path(name[:-3] if name.endswith(".gz") else name).suffix


def _wanted(path: Path, source: str) -> bool:
    """Whether a file found while walking a folder belongs to the source (hidden files never do)."""
    if path.name.startswith("."):
        return False
    if source == "fasta":
        return _base_suffix(path) in FASTA_SUFFIXES
    if source == "datasets":
        return _base_suffix(path) in DATASETS_BUILDERS
    return True


def source_files(cfg: DataConfig, field: str = "path") -> list[Path]:
    """The files of the corpus in reading order: paths as given, each folder walked in sorted order.
    `field`: "path", or "val_path" for the validation files of a corpus split by its maker."""
    given_paths = getattr(cfg, field)
    paths = [given_paths] if isinstance(given_paths, str) else given_paths
    files = []
    for given in paths:
        path = resolve_path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p, cfg.source)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ValueError(f"data.{field}: folder {path} holds no {cfg.source} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"data.{field}: {given!r} does not exist ({path})")
    if not files:
        raise ValueError(f"data.{field}: no files given")
    return files


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def iter_documents(cfg: DataConfig, field: str = "path") -> Iterator[Document]:
    """All documents of the corpus (of `data.val_path` with field="val_path"), in file order, cut to
    `max_bytes` bytes in total if set."""
    readers = {"text": _text_documents, "datasets": _datasets_documents, "fasta": _fasta_documents}
    if cfg.source not in readers:
        raise ValueError(f"data.source: unknown source {cfg.source!r}; expected one of {', '.join(readers)}")
    budget = cfg.max_bytes
    for path in source_files(cfg, field):
        try:
            for doc in readers[cfg.source](path, cfg):
                if budget is not None:
                    doc.text = doc.text[:budget]
                    budget -= len(doc.text)
                # An empty document (an empty file, an all-N record with dna_n_runs="drop") teaches nothing.
                if doc.text:
                    yield doc
                if budget is not None and budget <= 0:
                    return
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(_gzip_problem(path, e)) from None


def _gzip_problem(path: Path, e: Exception) -> str:
    if isinstance(e, EOFError):
        return f"{path}: the gzip file is truncated (it ends before its end-of-stream marker); copy or compress it again"
    if isinstance(e, gzip.BadGzipFile):
        return f"{path}: not a gzip file, though its name ends in .gz ({e}); rename it or compress it"
    return f"{path}: the gzip data is corrupt ({e}); copy or compress it again"


def _text_documents(path: Path, cfg: DataConfig) -> Iterator[Document]:
    with _open(path) as f:
        yield Document(f.read(), {"path": str(path)})


def _datasets_documents(path: Path, cfg: DataConfig) -> Iterator[Document]:
    builder = DATASETS_BUILDERS.get(_base_suffix(path))
    if builder is None:
        raise ValueError(f"{path}: cannot tell the format; expected one of {', '.join(DATASETS_BUILDERS)} (optionally .gz)")
    # Local files need no network: say so to `datasets` (it reads this when first imported).
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    # The arrow cache goes beside our shards, not into ~/.cache/huggingface.
    ds = datasets.load_dataset(builder, data_files=[str(path)], split="train",
                               cache_dir=str(cache_root(cfg) / "datasets"))
    if cfg.text_field not in ds.column_names:
        raise ValueError(f"{path}: no field {cfg.text_field!r} (data.text_field); fields: {', '.join(ds.column_names)}")
    row = 0
    for batch in ds.select_columns([cfg.text_field]).iter(batch_size=256):
        for text in batch[cfg.text_field]:
            if not isinstance(text, str):
                raise ValueError(f"{path}: row {row}: field {cfg.text_field!r} is {text!r}, not a string")
            yield Document(text.encode("utf-8"), {"path": str(path), "row": row})
            row += 1


def _fasta_rules(cfg: DataConfig) -> tuple[str | None, bytes | None, bool]:
    """(alphabet name, allowed bytes or None for unchecked, whether DNA rules apply)."""
    name = cfg.alphabet or (cfg.kind if cfg.kind in ALPHABETS else None)
    if name is None:
        return None, None, False
    is_dna = name == "dna" or cfg.kind == "dna"
    letters = ALPHABETS.get(name, name)
    if is_dna:
        letters += letters.lower()  # soft-masked bases; `dna_lowercase` folds or keeps them
    return name, letters.encode("ascii"), is_dna


def _fasta_documents(path: Path, cfg: DataConfig) -> Iterator[Document]:
    name, allowed, is_dna = _fasta_rules(cfg)
    header, header_line, lines = None, 0, []

    def record() -> Document:
        if not lines:
            raise ValueError(f"{path}: line {header_line}: FASTA record {header!r} has no sequence")
        seq = b"".join(lines)
        if is_dna and cfg.dna_lowercase == "upper":
            seq = seq.upper()
        if is_dna and cfg.dna_n_runs != "keep":
            seq = re.sub(rb"[Nn]+", (lambda m: m.group()[:1]) if cfg.dna_n_runs == "collapse" else b"", seq)
        return Document(seq, {"path": str(path), "header": header, "line": header_line})

    number = 0
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip(b" \t\r\n")
            if line.startswith(b">"):
                if header is not None:
                    yield record()
                header, header_line, lines = line[1:].decode("utf-8", "replace"), number, []
            elif line:
                if header is None:
                    raise ValueError(f"{path}: line {number}: sequence before the first '>' header")
                if allowed is not None:
                    bad = line.translate(None, allowed)
                    if bad:
                        char = bad[:1]
                        shown = repr(char.decode()) if char.isascii() else repr(char)
                        raise ValueError(f"{path}: line {number}, column {line.index(char) + 1}: character {shown} "
                                         f"is not in the {name} alphabet ({allowed.decode()})")
                lines.append(line)
    if header is None:
        raise ValueError(f"{path}: line {max(number, 1)}: no FASTA record (empty file or no '>' header)")
    yield record()
