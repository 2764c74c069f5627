"""The text with its chunks marked, for a terminal; and the display units shared with the HTML view.

A display unit is one valid UTF-8 character, or one byte that is not part of one. Characters are never
split: a boundary inside a multi-byte character is shown at the start of that character, and chunks
that lie wholly inside one character merge into the chunk shown there.

Terminal markers, finest selected stage first: its chunks are separated by `|`, the next stage's
chunks are enclosed in `[ ]`, a third's in `{ }`. In colour (ANSI, for a terminal) the finest stage
alternates the background, the next the foreground, a third the underline, and no marker is written.

Escapes, reversed exactly by `unescape_term`: `\\` `\\|` `\\[` `\\]` `\\{` `\\}` for those characters;
`\\n` followed by a real line break for a newline (the break is layout only); `\\t`, `\\r`; and `\\xNN` for
each byte of invalid UTF-8 or of a non-printable character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hnet.analysis.boundaries import Boundaries, StageBoundaries

SPECIAL = "\\|[]{}"
NAMED = {"\n": "\\n\n", "\t": "\\t", "\r": "\\r"}
BRACKETS = [("[", "]"), ("{", "}")]  # the 2nd and 3rd finest selected stages
# Per level (finest first), the SGR codes of its even and odd chunks.
COLORS = [("48;5;153", "48;5;223"), ("38;5;16", "38;5;124"), ("24", "4")]
RESET = "\x1b[0m"


def display_units(text: bytes) -> tuple[str, np.ndarray]:
    """The text as characters, an invalid byte b being the lone surrogate U+DC00+b (Python's
    surrogateescape), and the byte offset where each begins."""
    chars = text.decode("utf-8", errors="surrogateescape")
    sizes = np.fromiter((_utf8_size(ord(c)) for c in chars), dtype=np.int64, count=len(chars))
    return chars, np.cumsum(sizes) - sizes


def _utf8_size(code: int) -> int:
    if code < 0x80 or 0xDC80 <= code <= 0xDCFF:
        return 1
    return 2 if code < 0x800 else 3 if code < 0x10000 else 4


def is_shown_escaped(ch: str) -> bool:
    """Invalid bytes (lone surrogates) and non-printable characters are shown as \\xNN escapes."""
    return not ch.isprintable()


def hex_escape(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", errors="surrogateescape"))


@dataclass
class ShownChunks:
    """One stage's chunks as displayed, each beginning at a display unit."""

    stage: int
    units: np.ndarray  # (k,) int: the unit where each chunk begins, increasing; units[0] == 0
    offsets: np.ndarray  # (k,) int: byte offset of the boundary shown there (0 for the text start)
    prob: np.ndarray  # (k,) float: this stage's p there; nan where the stage routes no position
    next_prob: np.ndarray  # (k,) float: the next stage's p for this chunk; nan if none


def _prob_at(stage: StageBoundaries | None, offsets: np.ndarray) -> np.ndarray:
    if stage is None or len(stage.offsets) == 0:
        return np.full(len(offsets), np.nan)
    i = np.minimum(np.searchsorted(stage.offsets, offsets), len(stage.offsets) - 1)
    return np.where(stage.offsets[i] == offsets, stage.prob[i], np.nan)


def shown_chunks(b: Boundaries, stages: list[int], unit_offsets: np.ndarray) -> list[ShownChunks]:
    """The chunks of the selected stages (finest first) placed on display units."""
    by_stage = {st.stage: st for st in b.stages}
    out = []
    for s in sorted(stages):
        starts = by_stage[s].starts
        units, first = np.unique(np.searchsorted(unit_offsets, starts, side="right") - 1, return_index=True)
        offsets = starts[first]
        if not len(units) or units[0] != 0:  # the text start always begins a chunk on screen
            units, offsets = np.r_[0, units], np.r_[0, offsets]
        out.append(ShownChunks(s, units, offsets, _prob_at(by_stage[s], offsets),
                               _prob_at(by_stage.get(s + 1), offsets)))
    return out


def chunk_depth(shown: list[ShownChunks], num_units: int) -> np.ndarray:
    """(num_units,) int: how many of the shown stages begin a chunk at each unit. Stages nest, so depth
    d means the d finest."""
    depth = np.zeros(num_units, dtype=np.int64)
    for sc in shown:
        depth[sc.units] += 1
    return depth


def _escape(ch: str) -> str:
    if ch in SPECIAL:
        return "\\" + ch
    if ch in NAMED:
        return NAMED[ch]
    return hex_escape(ch) if is_shown_escaped(ch) else ch


def _marker(depth: int, first: bool) -> str:
    """The markers before a unit where the `depth` finest stages begin a chunk."""
    opens = "".join(BRACKETS[k - 1][0] for k in range(depth - 1, 0, -1))
    if first:
        return opens
    return "|" if depth == 1 else "".join(BRACKETS[k - 1][1] for k in range(1, depth)) + opens


def render_term(b: Boundaries, stages: list[int] | None = None, color: bool = False) -> str:
    """The text with the selected stages' chunks marked (all stages by default), as the module doc says."""
    stages = stages or [st.stage for st in b.stages]
    if len(stages) > len(BRACKETS) + 1:
        raise ValueError(f"the terminal view shows at most {len(BRACKETS) + 1} stages at once")
    chars, unit_offsets = display_units(b.text)
    depth = chunk_depth(shown_chunks(b, stages, unit_offsets), len(chars))
    parity = [0] * len(COLORS)
    style, out = "", []
    for i, ch in enumerate(chars):
        text = _escape(ch)
        if not color:
            out.append((_marker(depth[i], i == 0) if depth[i] else "") + text)
            continue
        if depth[i]:
            if i:
                parity[: depth[i]] = [1 - p for p in parity[: depth[i]]]
            style = "\x1b[0;" + ";".join(c[p] for c, p in zip(COLORS, parity)) + "m"
        # A background carried across a line break would paint the rest of the line.
        out.append((style if depth[i] else "") + text.replace("\n", RESET + "\n" + style))
    out.append(RESET if color else "".join(BRACKETS[k - 1][1] for k in range(1, len(stages))))
    return "".join(out)


_TOKENS = re.compile(r"\x1b\[[0-9;]*m|\\x[0-9a-f]{2}|\\.|[\n|\[\]{}]|[^\\\x1b\n|\[\]{}]+", re.S)
_UNESCAPE = {"\\n": b"\n", "\\t": b"\t", "\\r": b"\r"}


def unescape_term(rendered: str) -> bytes:
    """The original bytes of `render_term`'s output: colours and markers dropped, escapes undone."""
    out = bytearray()
    for m in _TOKENS.finditer(rendered):
        token = m.group()
        if token.startswith("\\x"):
            out.append(int(token[2:], 16))
        elif token.startswith("\\"):
            out += _UNESCAPE.get(token, token[1].encode())
        elif not (token.startswith("\x1b") or token in "\n|[]{}"):
            out += token.encode("utf-8", errors="surrogateescape")
    return bytes(out)
