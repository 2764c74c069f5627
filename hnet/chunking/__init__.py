"""Dynamic chunking (routing, chunk, dechunk, ratio loss) and the tools that inspect its boundaries.

Only the inspection tools are exported here; plots live in `hnet.chunking.plots` (it imports matplotlib).
"""

from hnet.chunking.boundaries import Boundaries, StageBoundaries, extract_boundaries, parse_stages
from hnet.chunking.inspect import write_boundary_snapshot
from hnet.chunking.render import render_term, unescape_term
from hnet.chunking.render_html import render_html
from hnet.chunking.stats import boundary_stats, compare_boundaries

__all__ = [
    "Boundaries", "StageBoundaries", "extract_boundaries", "parse_stages",
    "write_boundary_snapshot", "render_term", "unescape_term", "render_html",
    "boundary_stats", "compare_boundaries",
]
