"""What the HPC tests and bench/multislot.py share: sleep jobs that stamp their payload's start and end, the
intervals they ran in, bounded waits, the job server's record of acquire calls."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path


def sleep_job(panda_id: int, seconds: float, cores: int = 1, ram_mb: int = 100) -> dict:
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": "bash", "coreCount": cores, "minRamCount": ram_mb,
            "jobPars": f"-c 'date +%s.%N > t_start; sleep {seconds:g}; date +%s.%N > t_end'",
            "outFiles": f"hpc.{panda_id}.log.tgz", "logFile": f"hpc.{panda_id}.log.tgz", "scopeLog": "hpc.log"}


def intervals(work: Path, panda_ids: list[int]) -> dict[int, tuple[float, float]]:
    """(payload start, end) of each job, from the stamps in its work dir."""
    out = {}
    for panda_id in panda_ids:
        wd = work / f"PanDA_Pilot-{panda_id}"
        out[panda_id] = (float((wd / "t_start").read_text()), float((wd / "t_end").read_text()))
    return out


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
