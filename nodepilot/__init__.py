"""nodepilot: a worker-node pilot for PanDA-style distributed computing."""

import sys
import types

__version__ = "0.1.0"


def _httpx_without_its_cli() -> None:
    """httpx's package imports its command-line client (click, rich, pygments: ~60 ms, on the path of every
    pilot's start) whenever those are installed; nodepilot never runs it, so that module is a stub here."""
    if "httpx" in sys.modules:
        return

    def main() -> None:
        raise SystemExit("httpx's command-line client is not part of nodepilot: run it from its own install")

    stub = types.ModuleType("httpx._main")
    stub.main = main  # type: ignore[attr-defined]
    sys.modules.setdefault("httpx._main", stub)


_httpx_without_its_cli()
