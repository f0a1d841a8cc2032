"""The table of jobs printed when a pilot ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_summary(path: Path, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        console.print("no job ran")
        return
    table = Table(title="nodepilot: jobs")
    for column in ("PandaID", "state", "pilot err", "exe err", "stage-in s", "payload s",
                   "stage-out s", "files in", "files out", "diag"):
        table.add_column(column, overflow="fold")
    for r in results:
        t = r.get("timings") or {}
        table.add_row(
            str(r.get("panda_id") or "-"), r.get("state", "?"),
            str(r.get("pilot_error_code") or 0), str(r.get("exe_error_code") or 0),
            f"{t.get('stagein', 0):.3f}", f"{t.get('payload', 0):.3f}", f"{t.get('stageout', 0):.3f}",
            str(r.get("files_in", 0)), str(r.get("files_out", 0)),
            (r.get("pilot_error_diag") or "")[:80],
        )
    console.print(table)
