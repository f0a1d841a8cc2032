"""nodepilot: a worker-node pilot for PanDA-style distributed computing."""

import sys

__version__ = "0.1.0"

# httpx imports its optional command-line tool (click, rich, pygments: ~5 MB and ~30 ms in every pilot
# process) when those are installed; the pilot never runs it, so httpx takes its fallback instead
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
