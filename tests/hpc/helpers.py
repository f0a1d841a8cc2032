"""What the HPC tests share: sleep jobs that stamp their payload's start and end and the intervals they ran in
(bench/harness.py, shared with bench/multislot.py), bounded waits, the job server's record of acquire calls."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from bench.harness import intervals, sleep_job  # noqa: F401 (shared with bench/multislot.py, re-exported)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    return peak



def acquire_params(db: Path) -> dict[str, dict]:
    """The parameters of the acquire call that got each job definition file, as the server received them."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT source, acquire_params FROM jobs").fetchall()
    return {source: json.loads(params) for source, params in rows}
