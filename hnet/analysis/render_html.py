"""One self-contained HTML page of a text's chunk boundaries: nested spans, a legend, statistics.

Inside `<pre id="text">`, every chunk of a coarser stage is a `<span class="s2 pK">` holding the
`<span class="s1 pK">` of its finer chunks; K = floor(10 p) of the boundary that begins it shades the
chunk, and its title gives the byte offset and p (and the next stage's p for that chunk). Characters
are never split (see render.py); invalid UTF-8 and non-printable characters are shown as `\\xNN` inside
`<span class="x">`, so the page's text with those escapes undone is the original bytes. Newlines and
tabs are kept as they are. No script and no network: a 100 kB text stays a few MB of plain spans.
"""

from __future__ import annotations

import html
import math

from hnet.analysis.boundaries import Boundaries
from hnet.analysis.render import ShownChunks, chunk_depth, display_units, hex_escape, is_shown_escaped, shown_chunks
from hnet.analysis.stats import BYTE_CLASSES, boundary_stats

# Per stage: the CSS of a chunk whose boundary has probability p (a decile's midpoint).
STAGE_STYLE = {
    1: lambda p: f"border-left: 1px solid #6d8fbf; background: rgba(66, 133, 244, {0.08 + 0.8 * (p - 0.5):.2f})",
    2: lambda p: f"border-left: 3px solid rgba(200, 50, 30, {0.3 + 1.4 * (p - 0.5):.2f})",
    3: lambda p: f"border-left: 3px double rgba(30, 140, 60, {0.3 + 1.4 * (p - 0.5):.2f})",
}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
pre#text { font: 14px/1.9 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
           word-break: break-all; border: 1px solid #ddd; padding: 0.8em; }
.x { color: #b00; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.legend span.swatch { display: inline-block; padding: 0 0.6em; margin-right: 0.3em; font-family: monospace; }
"""


def _css() -> str:
    # Deciles below 5 occur only at the text start when it is no boundary: drawn as the faintest boundary.
    rules = [f".s{s}.p{k} {{ {style(max(k, 5) / 10 + 0.05)} }}" for s, style in STAGE_STYLE.items() for k in range(10)]
    return CSS + "\n".join(rules)


def _decile(p: float) -> int:
    return 0 if math.isnan(p) else min(int(p * 10), 9)


def _fmt(p: float) -> str:
    return "none" if math.isnan(p) else f"{p:.3f}"


def _open(sc: ShownChunks, i: int) -> str:
    title = f"stage {sc.stage} · byte {sc.offsets[i]} · p {_fmt(sc.prob[i])}"
    if not math.isnan(sc.next_prob[i]):
        title += f" · stage {sc.stage + 1} p {_fmt(sc.next_prob[i])}"
    return f'<span class="s{sc.stage} p{_decile(sc.prob[i])}" title="{title}">'


def _text_html(b: Boundaries, stages: list[int]) -> str:
    chars, unit_offsets = display_units(b.text)
    shown = shown_chunks(b, stages, unit_offsets)  # finest first
    depth = chunk_depth(shown, len(chars))
    nxt = [0] * len(shown)  # per stage, its next chunk
    out = []
    for i, ch in enumerate(chars):
        d = int(depth[i])
        if d:
            out.append("</span>" * d if i else "")
            for level in range(d - 1, -1, -1):  # coarse to fine
                out.append(_open(shown[level], nxt[level]))
                nxt[level] += 1
        out.append(f'<span class="x">{hex_escape(ch)}</span>' if is_shown_escaped(ch) and ch not in "\n\t"
                   else html.escape(ch, quote=False))
    out.append("</span>" * len(shown))
    return "".join(out)


def num(x, digits: int = 3) -> str:
    if x is None:  # a rate over no bytes
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _stats_table(stats: dict) -> str:
    stages = stats["stages"]
    rows = [
        ("chunks", [s["bytes_per_chunk"]["chunks"] for s in stages]),
        ("bytes per chunk, mean", [num(s["bytes_per_chunk"]["mean"], 2) for s in stages]),
        ("bytes per chunk, median", [num(s["bytes_per_chunk"]["median"], 1) for s in stages]),
        ("boundary rate (per byte)", [num(s["boundary_rate"]) for s in stages]),
        ("word starts: precision / recall / F1",
         [" / ".join(num(s["word_starts"][k]) for k in ("precision", "recall", "f1")) for s in stages]),
    ]
    rows += [(f"rate at {c} bytes ({stages[0]['rate_by_class'][c]['bytes']})",
              [num(s["rate_by_class"][c]["rate"]) for s in stages]) for c in BYTE_CLASSES]
    if stats["kind"] == "dna":
        rows += [(f"rate at nucleotide position mod 3 = {k}",
                  [num(s["dna"]["rate_by_phase"][k]["rate"]) for s in stages]) for k in ("0", "1", "2")]
    head = "<tr><th></th>" + "".join(f"<th>stage {s['stage']}</th>" for s in stages) + "</tr>"
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"
                   for name, values in rows)
    return f"<table>{head}{body}</table>"


def _legend(stages: list[int]) -> str:
    items = []
    for s in stages:
        swatches = "".join(f'<span class="swatch s{s} p{k}">p ≥ 0.{k}</span>' for k in range(5, 10))
        items.append(f"<p>stage {s} chunk: {swatches}</p>")
    return (
        '<div class="legend">' + "".join(items)
        + "<p>A coarser stage's chunk holds the finer chunks. Hover a chunk for the byte offset and the boundary "
          "probability p of its start. A boundary inside a multi-byte character is shown at the character's start; "
          'offset 0 always begins a chunk on screen. <span class="x">\\xNN</span>: a byte of invalid UTF-8 or of a '
          "non-printable character.</p></div>"
    )


def render_html(b: Boundaries, stages: list[int] | None = None, title: str = "H-Net chunk boundaries") -> str:
    """The page for the selected stages (all by default)."""
    stages = sorted(stages or [st.stage for st in b.stages])
    stats = boundary_stats(b, stages)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_css()}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(b.text):,} bytes ({stats["kind"]}), {len(stages)} stage(s) shown.</p>
{_legend(stages)}
{_stats_table(stats)}
<pre id="text">{_text_html(b, stages)}</pre>
</body></html>
"""
