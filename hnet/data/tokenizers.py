"""Tokenizers over raw bytes: the identity (`ByteTokenizer`) and sentencepiece BPE (`BPETokenizer`).

Both give `encode(bytes) -> np.ndarray` and `decode(ids) -> bytes` with `decode(encode(b)) == b` for
every byte string, plus `bos_id`, `vocab_size`, `dtype` (the smallest unsigned type holding every id),
`token_bytes()` (how many raw bytes each id stands for, so bits per byte can be computed over any
set of scored tokens) and `fingerprint` (what the shard cache key records).

BPE byte mapping: sentencepiece works on Unicode strings, so byte b is handed to it as the character
chr(b) (latin-1) and mapped back with ord(). Any byte string, valid UTF-8 or not, is then a valid
string, and the round trip is exact by construction. A multi-byte UTF-8 character (é, 三) becomes 2-4
such characters that BPE merges like any frequent pair, as GPT-2's byte-level BPE does. As there are
at most 256 distinct characters, character_coverage=1.0 keeps them all in the vocabulary, and
byte_fallback covers bytes never seen in training: their <0xXX> pieces are the UTF-8 bytes of chr(b),
which decode back to chr(b).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import sentencepiece as spm

from hnet.constants import BOS

MODEL_NAME = "tokenizer.model"
TRAIN_PIECE_CHARS = 4096  # training sentences are cut to this; sentencepiece skips longer ones
TRAIN_MAX_PIECES = 100_000  # sentencepiece samples this many pieces (about 400 MB) from larger corpora
ENCODE_CHARS = 1 << 20  # long documents are encoded in pieces of about this size to bound memory


def model_file(path: Path) -> Path:
    """A tokenizer path names a .model file or a folder holding tokenizer.model."""
    return path if path.suffix == ".model" else path / MODEL_NAME


def _id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ByteTokenizer:
    """Token id = byte value. The BOS id (254 by default, as the official generate.py uses) is a byte
    value too, which is why document starts live in the shards' offset index and are never searched for."""

    vocab_size = 256
    dtype = np.dtype(np.uint8)
    fingerprint = "bytes"

    def __init__(self, bos_id: int = BOS):
        if not 0 <= bos_id < 256:
            raise ValueError(f"data.bos_id: {bos_id} is not a byte value")
        self.bos_id = bos_id

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids) -> bytes:
        return bytes(np.asarray(ids).tolist())


class BPETokenizer:
    """A sentencepiece BPE model trained by `train_bpe` (byte <-> latin-1 mapping, see the module doc)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"data.tokenizer_path: {self.path} is not a sentencepiece model file")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id()
        if self.bos_id < 0:
            raise ValueError(f"{self.path}: the sentencepiece model has no BOS piece; train it with train_bpe")
        self.dtype = _id_dtype(self.vocab_size)
        self.fingerprint = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._token_bytes = None  # token_bytes(), once asked for

    def encode(self, data: bytes) -> np.ndarray:
        text = data.decode("latin-1")
        parts, start = [], 0
        while start < len(text):
            end = min(start + ENCODE_CHARS, len(text))
            if end < len(text):
                # Cut before the first space of a run: sentencepiece starts a new word there, so the
                # ids equal those of the whole text. Text without spaces (DNA) is cut anywhere.
                cut = text.rfind(" ", start + 1, end)
                while cut > start + 1 and text[cut - 1] == " ":
                    cut -= 1
                end = cut if cut > start else end
            parts.append(text[start:end])
            start = end
        ids = [np.asarray(p, dtype=self.dtype) for p in self.sp.encode(parts)]
        return np.concatenate(ids) if ids else np.empty(0, dtype=self.dtype)

    def decode(self, ids) -> bytes:
        """The bytes of any ids. Byte pieces that do not pair up as the UTF-8 of one latin-1 character (which
        `encode` never makes, but a sampling model may) decode to characters beyond latin-1, or U+FFFD: those
        give their UTF-8 bytes."""
        text = self.sp.decode(np.asarray(ids).tolist())
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return b"".join(c.encode("latin-1") if ord(c) < 256 else c.encode("utf-8") for c in text)

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) raw bytes per id, computed once. A byte piece <0xXX> is one UTF-8 byte of chr(b):
        the lead byte counts for the raw byte, a continuation byte for none, so every document sums exactly."""
        if self._token_bytes is not None:
            return self._token_bytes
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if self.sp.is_byte(i):
                counts[i] = (int(self.sp.id_to_piece(i)[3:5], 16) & 0xC0) != 0x80
            elif not (self.sp.is_control(i) or self.sp.is_unknown(i)):
                counts[i] = len(self.sp.id_to_piece(i))
        self._token_bytes = counts
        return counts


def _training_pieces(docs):
    """Training sentences: each document cut into pieces of at most TRAIN_PIECE_CHARS, after a newline
    where there is one. The cut only bounds sentencepiece's sentence length; encoding is not cut so."""
    for doc in docs:
        text = doc.text.decode("latin-1")
        start = 0
        while start < len(text):
            end = min(start + TRAIN_PIECE_CHARS, len(text))
            if end < len(text):
                newline = text.rfind("\n", start, end)
                end = newline + 1 if newline >= start else end
            yield text[start:end]
            start = end


def train_bpe(train_docs, vocab_size: int, out_dir: str | Path) -> BPETokenizer:
    """Train a byte-exact BPE model on `train_docs` (training documents only: a validation byte seen
    here would leak into the evaluation) and save it as OUT_DIR/tokenizer.model."""
    model = io.BytesIO()
    spm.set_random_generator_seed(0)  # sentencepiece's sample of a large corpus is then reproducible
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_pieces(train_docs), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0,
            # No normalization of any kind, so that ids map back to the very bytes they came from.
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_digits=False, allow_whitespace_only_pieces=True,
            # latin-1 characters from 0x80 take two bytes in sentencepiece's UTF-8.
            max_sentence_length=2 * TRAIN_PIECE_CHARS, input_sentence_size=TRAIN_MAX_PIECES,
            shuffle_input_sentence=True, unk_id=0, bos_id=1, eos_id=-1, pad_id=-1,
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"data.vocab_size {vocab_size}: sentencepiece cannot train this BPE model: {e}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_NAME
    tmp = path.with_name(f".{MODEL_NAME}.{os.getpid()}.tmp")  # renamed when whole: no half-written model
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, path)
    return BPETokenizer(path)


def check_trained_with(tokenizer, recorded: str | None, checkpoint, consequence: str = "") -> None:
    """A ValueError unless `tokenizer` is the one whose fingerprint the checkpoint's state.json recorded
    (None: a checkpoint from before the record, taken as it is)."""
    if recorded and recorded != tokenizer.fingerprint:
        name = getattr(tokenizer, "path", "the byte tokenizer")
        raise ValueError(f"{name}: not the tokenizer that {checkpoint} was trained with (sha256 "
                         f"{tokenizer.fingerprint[:12]}..., the checkpoint records {recorded[:12]}...); "
                         f"{consequence}put the run's own tokenizer back")
