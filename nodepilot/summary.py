"""The table of jobs printed when a pilot ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def load_summary(path: Path) -> list[dict]:
    """A pilot's jobs from its summary.json; ValueError in one line if that is no such file."""
    try:
        results = json.loads(path.read_text())
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory: give its summary.json") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(f"{path} is not a pilot's summary (not JSON)") from None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(f"{path} is not a pilot's summary (not a list of jobs)")
    return results


def any_failed(path: Path) -> bool:
    """Whether a job of the pilot whose summary this is did not finish (none ran: False)."""
    try:
        return any(r.get("state") != "finished" for r in load_summary(path))
    except ValueError:
        return False


def print_summary(path: Path, console: Console | None = None) -> None:
    """At a pilot's end: its table, or that no job ran."""
    try:
        results = load_summary(path)
    except ValueError:
        (console or _console()).print("no job ran")
        return
    print_table(results, console)


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


def print_table(results: list[dict], console: Console | None = None) -> None:
    console = console or _console()
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
