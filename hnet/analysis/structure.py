"""Structure scores: a few numbers per routing stage that say whether a model's boundaries follow the
structure of its data, logged at every evaluation on the run's fixed validation snippet.

text     word starts: precision, recall and F1 of the boundaries, beside the F1 that boundaries placed at
         random at the same rate would get in expectation (precision = the share of bytes that begin a word,
         recall = the boundary rate); the same against the whitespace byte before each word (a chunker may
         begin its chunks there, " word" as GPT-2's BPE and SpaceByte do, and then scores near zero on word
         starts while following words exactly); the boundary rate at whitespace and at letters
dna      the boundary rate at each codon position inside long open reading frames (a codon-aligned
         chunker favours one position)
protein  the boundary rate per residue class
"""

from __future__ import annotations

import numpy as np

from hnet.analysis.boundaries import Boundaries
from hnet.analysis.stats import agreement, boundary_stats, word_starts

# Residue classes by side chain (one common grouping); letters outside them (B, X, Z, ...) are left out.
RESIDUE_CLASSES = {"hydrophobic": "AVILMFWC", "polar": "STNQY", "positive": "KRH", "negative": "DE", "special": "GP"}


def random_f1(predicted: int, reference: int, n: int) -> float | None:
    """Expected precision and recall of `predicted` offsets drawn at random among n against `reference`
    ones are reference / n and predicted / n; their F1."""
    if not (n and predicted and reference):
        return None
    precision, recall = reference / n, predicted / n
    return 2 * precision * recall / (precision + recall)


def _residue_class_rates(by_residue: dict) -> dict:
    out = {}
    for name, letters in RESIDUE_CLASSES.items():
        counts = [by_residue[c] for c in letters if c in by_residue]
        total = sum(c["bytes"] for c in counts)
        out[f"{name}_rate"] = sum(c["boundaries"] for c in counts) / total if total else None
    return out


def _space_start_scores(starts: np.ndarray, spaces_before: np.ndarray, n: int) -> dict:
    spaces = agreement(starts, spaces_before)
    return {"space_start_precision": spaces["precision"], "space_start_f1": spaces["f1"],
            "space_start_f1_random": random_f1(spaces["predicted"], spaces["reference"], n)}


def structure_scores(b: Boundaries) -> list[dict]:
    """One flat dict per routing stage of `b` (stage 1 first): the scores of the module docstring for the
    kind of data the text is, and its boundary rate."""
    stats = boundary_stats(b)
    word_offsets = word_starts(b.text)
    spaces_before = word_offsets[word_offsets > 0] - 1  # the whitespace byte just before each word
    out = []
    for stage, routed in zip(stats["stages"], b.stages):
        scores = {"boundary_rate": stage["boundary_rate"]}
        if stats["kind"] == "text":
            words = stage["word_starts"]
            scores.update(word_start_precision=words["precision"], word_start_recall=words["recall"],
                          word_start_f1=words["f1"],
                          word_start_f1_random=random_f1(words["predicted"], words["reference"], stats["bytes"]),
                          **_space_start_scores(routed.starts, spaces_before, stats["bytes"]),
                          whitespace_rate=stage["rate_by_class"]["whitespace"]["rate"],
                          letter_rate=stage["rate_by_class"]["letter"]["rate"])
        elif stats["kind"] == "dna":
            codons = stage["dna"]["rate_by_codon_position_in_orfs"]
            scores.update({f"codon_position_{k}_rate": v["rate"] for k, v in codons.items()})
            scores["orf_nucleotides"] = stage["dna"]["orf_nucleotides"]
        elif stats["kind"] == "protein":
            scores.update(_residue_class_rates(stage["protein"]["rate_by_residue"]))
        out.append(scores)
    return out


def structure_snippet(docs, size: int) -> bytes:
    """The validation snippet the scores are drawn on (fixed for a run, so evaluations compare): the middle
    `size` bytes of the first validation document that has that many, as a book's first pages are its title
    page and contents, not its prose; else the first `size` bytes of the documents joined by newlines."""
    joined, n = [], 0
    for doc in docs:
        if len(doc) >= size:
            start = (len(doc) - size) // 2
            return _as_bytes(doc[start:start + size])
        if n <= size:  # the joined text so far is n - 1 bytes
            joined.append(_as_bytes(doc))
            n += len(doc) + 1
    return b"\n".join(joined)[:size]


def _as_bytes(doc) -> bytes:
    return bytes(doc) if isinstance(doc, (bytes, bytearray)) else np.asarray(doc, dtype=np.uint8).tobytes()
