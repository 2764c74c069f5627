"""The boundaries a model draws on a text: extraction, statistics (words, tokens, codons, residues) and
rendering for a terminal or HTML. It sits above the models, beside eval; the training loop uses it for
its boundary snapshots.

Plots live in `hnet.analysis.plots` (it imports matplotlib).
"""

from hnet.analysis.boundaries import Boundaries, StageBoundaries, extract_boundaries, parse_stages
from hnet.analysis.inspect import write_boundary_snapshot
from hnet.analysis.render import render_term, unescape_term
from hnet.analysis.render_html import render_html
from hnet.analysis.stats import boundary_stats, compare_boundaries

__all__ = [
    "Boundaries", "StageBoundaries", "extract_boundaries", "parse_stages",
    "write_boundary_snapshot", "render_term", "unescape_term", "render_html",
    "boundary_stats", "compare_boundaries",
]
