"""Statistics of chunk boundaries: chunk lengths, boundary rates by byte class, agreement with word
and token starts, DNA and protein views, and the agreement of two models.

Rates are per byte: the fraction of the bytes of a class at which a chunk of the stage begins (for
stage 2 too, so stages compare directly). Agreement compares sets of byte offsets exactly, with
precision = matched / predicted and recall = matched / reference; a ratio over an empty set is None.
"""

from __future__ import annotations

import re
import string

import numpy as np

from hnet.analysis.boundaries import Boundaries

BYTE_CLASSES = ("newline", "whitespace", "punctuation", "letter", "digit", "non_ascii", "control")
WHITESPACE = b" \t\n\r\x0b\x0c"
HISTOGRAM_MAX = 64  # chunk lengths 1..64 bytes are counted one by one, longer ones together
DNA_ALPHABET = b"ACGTN"
PROTEIN_ALPHABET = b"ACDEFGHIKLMNPQRSTVWYBXZJUO*"
DNA_MOTIFS = ("ATG", "TAA", "TAG", "TGA")  # start and stop codons
STOP_CODONS = (b"TAA", b"TAG", b"TGA")
ORF_MIN_CODONS = 100  # "long" open reading frames: 300 nucleotides or more
RECORD_START_SPAN = 10  # protein: residues counted as "near the start of a record"
SEQUENCE_SHARE = 0.9  # DNA (protein) when this share of the non-space bytes outside headers is in the alphabet


def _class_table() -> np.ndarray:
    table = np.full(256, BYTE_CLASSES.index("control"), dtype=np.int8)
    members = {  # in this order, so that newline overrides whitespace
        "whitespace": WHITESPACE, "newline": b"\n", "punctuation": string.punctuation.encode(),
        "letter": string.ascii_letters.encode(), "digit": string.digits.encode(), "non_ascii": bytes(range(128, 256)),
    }
    for name, values in members.items():
        table[list(values)] = BYTE_CLASSES.index(name)
    return table


_CLASS_OF_BYTE = _class_table()


def _bytes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def byte_classes(text: bytes) -> np.ndarray:
    """(n,) int8: the index in BYTE_CLASSES of every byte (every byte of a multi-byte character is non_ascii)."""
    return _CLASS_OF_BYTE[_bytes(text)]


def chunk_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths in bytes of the chunks that begin at `starts` (and at offset 0) in a text of n bytes."""
    cuts = np.union1d([0], starts)
    return np.diff(np.append(cuts, n))


def length_summary(lengths: np.ndarray) -> dict:
    counts = np.bincount(np.minimum(lengths, HISTOGRAM_MAX + 1), minlength=HISTOGRAM_MAX + 2)
    return {
        "chunks": len(lengths),
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "histogram": {"lengths": list(range(1, HISTOGRAM_MAX + 1)), "counts": counts[1:-1].tolist(),
                      "longer": int(counts[-1])},
    }


def rates(is_start: np.ndarray, groups: np.ndarray, names) -> dict:
    """{name: {bytes, boundaries, rate}} for each group index of `groups` (positions aligned with is_start)."""
    total = np.bincount(groups, minlength=len(names))
    hits = np.bincount(groups, weights=is_start, minlength=len(names)).astype(int)
    return {name: {"bytes": int(t), "boundaries": int(h), "rate": _ratio(int(h), int(t))}
            for name, t, h in zip(names, total, hits)}


def agreement(predicted: np.ndarray, reference: np.ndarray) -> dict:
    matched = len(np.intersect1d(predicted, reference))
    precision, recall = _ratio(matched, len(predicted)), _ratio(matched, len(reference))
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": len(predicted),
            "reference": len(reference), "matched": matched}


def word_starts(text: bytes) -> np.ndarray:
    """Offsets of whitespace-delimited word starts: a non-whitespace byte at 0 or after whitespace."""
    space = np.isin(_bytes(text), np.frombuffer(WHITESPACE, np.uint8))
    return np.flatnonzero(~space & np.r_[True, space[:-1]])


def token_starts(text: bytes, tokenizer) -> np.ndarray:
    """Offsets where the tokens of `tokenizer` begin. It must give `encode(bytes) -> ids` and
    `token_bytes() -> (vocab_size,)` raw bytes per id, as hnet.data's BPETokenizer over a sentencepiece
    model does; a piece of no raw byte (a UTF-8 continuation byte piece) begins nothing."""
    lengths = np.asarray(tokenizer.token_bytes())[np.asarray(tokenizer.encode(text), dtype=np.int64)]
    return (np.cumsum(lengths) - lengths)[lengths > 0]


def _sequence_bytes(text: bytes, fold_case: bool) -> tuple[np.ndarray, np.ndarray]:
    """The bytes (upper-cased if fold_case) and the mask of those outside FASTA header lines ('>' ...)."""
    arr = _bytes(text)
    newline = arr == ord("\n")
    line = np.cumsum(newline) - newline  # the line each byte is on
    header = (arr[np.flatnonzero(np.r_[True, newline[:-1]])] == ord(">"))[line]
    if fold_case:
        arr = np.where((arr >= ord("a")) & (arr <= ord("z")), arr - 32, arr).astype(np.uint8)
    return arr, ~header


def _residues(text: bytes, alphabet: bytes, fold_case: bool) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the letters of `alphabet` outside header lines, and those letters."""
    arr, body = _sequence_bytes(text, fold_case)
    at = np.flatnonzero(np.isin(arr, np.frombuffer(alphabet, np.uint8)) & body)
    return at, arr[at]


def sequence_kind(text: bytes) -> str:
    """'dna' (ACGTN in any case, soft-masked repeats being lower case), 'protein' (upper-case residue
    letters) or 'text': by the share of the non-whitespace bytes outside header lines."""
    for kind, alphabet, fold_case in (("dna", DNA_ALPHABET, True), ("protein", PROTEIN_ALPHABET, False)):
        arr, body = _sequence_bytes(text, fold_case)
        content = arr[body & ~np.isin(arr, np.frombuffer(WHITESPACE, np.uint8))]
        if len(content) and np.isin(content, np.frombuffer(alphabet, np.uint8)).mean() >= SEQUENCE_SHARE:
            return kind
    return "text"


def dna_stats(text: bytes, is_start: np.ndarray, motifs=DNA_MOTIFS, orf_min_codons: int = ORF_MIN_CODONS) -> dict:
    """Boundary rate by nucleotide position modulo 3 (counted from the first nucleotide of the text, so
    a phase, not a reading frame) and at the starts of each motif (found across line breaks)."""
    at, letters = _residues(text, DNA_ALPHABET, fold_case=True)
    sequence = letters.tobytes()
    found = {}
    for motif in motifs:
        pattern = b"(?=" + re.escape(motif.upper().encode()) + b")"  # overlapping matches
        hits = at[[m.start() for m in re.finditer(pattern, sequence)]]
        found[motif] = {"count": len(hits), "boundaries": int(is_start[hits].sum()),
                        "rate": _ratio(int(is_start[hits].sum()), len(hits))}
    in_orf, codon_position = open_reading_frames(sequence, orf_min_codons)
    return {"nucleotides": len(at), "rate": _ratio(int(is_start[at].sum()), len(at)),
            "rate_by_phase": rates(is_start[at], np.arange(len(at)) % 3, ("0", "1", "2")), "motifs": found,
            "orf_nucleotides": int(in_orf.sum()),
            "rate_by_codon_position_in_orfs": rates(is_start[at][in_orf], codon_position[in_orf], ("1", "2", "3"))}


def open_reading_frames(sequence: bytes, min_codons: int = ORF_MIN_CODONS) -> tuple[np.ndarray, np.ndarray]:
    """A simple forward-strand ORF scan: from an ATG to the first in-frame stop codon (included), kept when
    it spans at least `min_codons` codons. Returns, per nucleotide, whether it lies in such an ORF and its
    position in its codon (0, 1, 2; meaningful inside ORFs only)."""
    n = len(sequence)
    in_orf = np.zeros(n, dtype=bool)
    codon_position = np.zeros(n, dtype=np.int64)
    for frame in range(3):
        start = None
        for i in range(frame, n - 2, 3):
            codon = sequence[i:i + 3]
            if start is None and codon == b"ATG":
                start = i
            elif start is not None and codon in STOP_CODONS:
                if (i + 3 - start) // 3 >= min_codons:
                    in_orf[start:i + 3] = True
                    codon_position[start:i + 3] = np.arange(i + 3 - start) % 3
                start = None
    return in_orf, codon_position


def protein_stats(text: bytes, is_start: np.ndarray) -> dict:
    """Boundary rate by residue letter (for the letters present), and by offset from the start of its record
    (the text's start, or the first residue after each FASTA header): offsets 0..9 apart, the rest together."""
    at, letters = _residues(text, PROTEIN_ALPHABET, fold_case=False)
    present = np.unique(letters)
    by_residue = rates(is_start[at], np.searchsorted(present, letters), [chr(c) for c in present])
    headers = np.flatnonzero(_bytes(text) == ord(">"))
    record = np.searchsorted(headers, at)  # residues after the same number of '>' share a record
    first = np.r_[True, record[1:] != record[:-1]]
    offset = np.arange(len(at)) - np.maximum.accumulate(np.where(first, np.arange(len(at)), 0))
    names = [str(i) for i in range(RECORD_START_SPAN)] + [f">={RECORD_START_SPAN}"]
    by_offset = rates(is_start[at], np.minimum(offset, RECORD_START_SPAN), names)
    return {"residues": len(at), "rate": _ratio(int(is_start[at].sum()), len(at)), "rate_by_residue": by_residue,
            "rate_by_offset_from_record_start": by_offset}


def stage_stats(text: bytes, starts: np.ndarray, tokens: np.ndarray | None = None, kind: str = "text",
                motifs=DNA_MOTIFS) -> dict:
    """Everything above for one stage whose chunks begin at `starts`."""
    is_start = np.zeros(len(text), dtype=bool)
    is_start[starts] = True
    out = {
        "boundaries": len(starts),
        "boundary_rate": len(starts) / len(text),
        "bytes_per_chunk": length_summary(chunk_lengths(starts, len(text))),
        "rate_by_class": rates(is_start, byte_classes(text), BYTE_CLASSES),
        "word_starts": agreement(starts, word_starts(text)),
    }
    if tokens is not None:
        out["token_starts"] = agreement(starts, tokens)
    if kind == "dna":
        out["dna"] = dna_stats(text, is_start, motifs)
    elif kind == "protein":
        out["protein"] = protein_stats(text, is_start)
    return out


def boundary_stats(b: Boundaries, stages: list[int] | None = None, tokenizer=None, motifs=DNA_MOTIFS) -> dict:
    """Statistics of the selected stages (all by default); token agreement only with a tokenizer, the
    DNA and protein views only for a text of that kind."""
    tokens = token_starts(b.text, tokenizer) if tokenizer is not None else None
    kind = sequence_kind(b.text)
    return {
        "bytes": len(b.text),
        "kind": kind,
        "stages": [{"stage": st.stage, **stage_stats(b.text, st.starts, tokens, kind, motifs)}
                   for st in b.stages if stages is None or st.stage in stages],
    }


def compare_boundaries(a: Boundaries, b: Boundaries) -> list[dict]:
    """Per stage both models have: the agreement of a's boundaries with b's (b as the reference)."""
    if a.text != b.text:
        raise ValueError("the two models' boundaries were drawn on different texts")
    return [{"stage": sa.stage, **agreement(sa.starts, sb.starts)} for sa, sb in zip(a.stages, b.stages)]
