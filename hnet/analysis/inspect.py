"""`hnet inspect`: a model's chunk boundaries on a text, for a terminal, as HTML or as JSON; and the
page the training loop writes at each evaluation (`write_boundary_snapshot`).

JSON: {"model", "bytes", "stages": [{"stage", "boundaries", "offsets", "prob"}], "stats"}: per stage,
the byte offsets of its boundaries, the offsets of every position it routes with p there (stage 1:
every byte; stage 2: every stage-1 boundary), and `stats` as `boundary_stats` gives it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from hnet.analysis.boundaries import Boundaries, extract_boundaries, parse_stages
from hnet.analysis.render import render_term
from hnet.analysis.render_html import render_html
from hnet.analysis.stats import boundary_stats


def read_text(text: str | None = None, file: str | None = None) -> bytes:
    """The bytes to inspect: a file's bytes, or a command-line string."""
    if file is not None:
        if not Path(file).is_file():
            raise ValueError(f"{file}: no such file")
        data = Path(file).read_bytes()
    else:
        # argv was decoded with surrogateescape, so this gives back the very bytes that were passed.
        data = text.encode("utf-8", errors="surrogateescape")
    if not data:
        raise ValueError(f"{file or '--text'}: the text is empty, nothing to inspect")
    return data


def inspection_json(b: Boundaries, stages: list[int], model_name: str) -> dict:
    return {
        "model": model_name,
        "bytes": len(b.text),
        "stages": [
            {"stage": st.stage, "boundaries": st.starts.tolist(), "offsets": st.offsets.tolist(),
             "prob": np.round(st.prob.astype(np.float64), 6).tolist()}
            for st in b.stages if st.stage in stages
        ],
        "stats": boundary_stats(b, stages),
    }


def summary(b: Boundaries, stages: list[int]) -> str:
    lines = []
    for s in boundary_stats(b, stages)["stages"]:
        chunks = s["bytes_per_chunk"]
        lines.append(f"stage {s['stage']}: {chunks['chunks']} chunks, {chunks['mean']:.2f} bytes per chunk "
                     f"(median {chunks['median']:g}), boundary rate {s['boundary_rate']:.3f}")
    return "\n".join(lines)


def inspect_boundaries(model, text: bytes, stage: str = "all", fmt: str = "term", out: str | Path | None = None,
                       name: str = "the model") -> None:
    """`hnet inspect`: `model`'s boundaries on `text` at `stage` ('all' or a stage number) as `fmt` ('term',
    'html' or 'json'), written to `out` or else to stdout; `name` titles the page and the JSON. The
    terminal view is colored on a terminal (unless NO_COLOR) and its summary goes to stderr."""
    stages = parse_stages(stage, model.config.num_stages - 1)
    b = extract_boundaries(model, text)
    if fmt == "term":
        color = out is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        output = render_term(b, stages, color=color) + "\n"
        print(summary(b, stages), file=sys.stderr)
    elif fmt == "html":
        output = render_html(b, stages, title=f"Chunk boundaries of {name}")
    else:
        output = json.dumps(inspection_json(b, stages, name)) + "\n"
    if out:
        Path(out).write_text(output, encoding="utf-8")
        print(f"wrote {out}")
    else:
        sys.stdout.write(output)


def write_boundary_snapshot(model, text: bytes, path: str | Path) -> Path:
    """Write the HTML page of `model`'s boundaries on `text` (the run's fixed validation snippet) to
    `path`, e.g. RUN_DIR/boundaries/step_000200.html. Pass the bare model, not a distributed wrapper."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(extract_boundaries(model, text), title=f"Chunk boundaries at {path.stem}"),
                    encoding="utf-8")
    return path
