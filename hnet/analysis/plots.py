"""Plots of chunk boundaries as PNG files. They draw on matplotlib's Agg canvas through `Figure`, so no
display and no global pyplot state are involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hnet.analysis.boundaries import Boundaries
from hnet.analysis.stats import BYTE_CLASSES, HISTOGRAM_MAX, boundary_stats, chunk_lengths

LABELED_SPAN = 120  # spans up to this many bytes get one tick label per byte


def _selected(b: Boundaries, stages: list[int] | None):
    return [st for st in b.stages if stages is None or st.stage in stages]


def _save(fig: Figure, path: str | Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)


def plot_chunk_lengths(b: Boundaries, path: str | Path, stages: list[int] | None = None) -> Path:
    """Histogram of chunk lengths in bytes per stage; the last bin holds every longer chunk."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    bins = np.arange(0.5, HISTOGRAM_MAX + 2.5)
    for st in _selected(b, stages):
        lengths = chunk_lengths(st.starts, len(b.text))
        ax.hist(np.minimum(lengths, HISTOGRAM_MAX + 1), bins=bins, histtype="step", linewidth=1.5,
                label=f"stage {st.stage} (mean {lengths.mean():.2f})")
    ax.set(xlabel=f"chunk length in bytes (last bin: longer than {HISTOGRAM_MAX})", ylabel="chunks")
    ax.legend()
    return _save(fig, path)


def _byte_label(byte: int) -> str:
    named = {ord(" "): "␣", ord("\n"): "\\n", ord("\t"): "\\t"}
    return named.get(byte, chr(byte) if 32 < byte < 127 else f"{byte:02x}")


def plot_boundary_prob(b: Boundaries, path: str | Path, start: int = 0, end: int | None = None,
                       stages: list[int] | None = None) -> Path:
    """Boundary probability p of each stage along the bytes [start, end) (200 bytes by default)."""
    end = min(len(b.text), start + 200 if end is None else end)
    if not 0 <= start < end:
        raise ValueError(f"the span [{start}, {end}) holds no byte of the {len(b.text)}-byte text")
    fig = Figure(figsize=(max(7.0, (end - start) / 12), 3.5))
    ax = fig.add_subplot()
    for st in _selected(b, stages):
        inside = (st.offsets >= start) & (st.offsets < end)
        ax.plot(st.offsets[inside], st.prob[inside], marker="o", markersize=3, linewidth=1,
                label=f"stage {st.stage}")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(start - 0.5, end - 0.5), ylim=(-0.02, 1.02), xlabel="byte offset", ylabel="boundary probability p")
    if end - start <= LABELED_SPAN:
        ax.set_xticks(range(start, end), [_byte_label(c) for c in b.text[start:end]], fontsize=7)
        ax.set_xlabel(f"bytes {start}..{end - 1}")
    ax.legend()
    return _save(fig, path)


def plot_rate_by_class(b: Boundaries, path: str | Path, stages: list[int] | None = None) -> Path:
    """Boundary rate per byte class, one bar per stage."""
    per_stage = boundary_stats(b, stages)["stages"]
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(per_stage))
    x = np.arange(len(BYTE_CLASSES))
    for i, s in enumerate(per_stage):
        rate = [s["rate_by_class"][c]["rate"] for c in BYTE_CLASSES]
        ax.bar(x + i * width, [np.nan if r is None else r for r in rate], width, label=f"stage {s['stage']}")
    ax.set_xticks(x + width * (len(per_stage) - 1) / 2, BYTE_CLASSES)
    ax.set(ylabel="boundaries per byte", ylim=(0, 1))
    ax.legend()
    return _save(fig, path)
