"""The bounds of the pilot's periods and counts (``--heartbeat``, ``--lifetime``, ``--max-jobs``, ``--slots``).

A heartbeat of 0 s would send updates as fast as the loop turns (thousands for a job of seconds) and
a negative or infinite one means nothing: such values are refused with one line, never used.
"""

from __future__ import annotations

import math

HEARTBEAT_S = (0.25, 86_400.0)  # under a minute is for tests; a day at most
LIFETIME_S = (1.0, 366 * 86_400.0)  # or 0: no limit besides the queue's
MAX_JOBS = (0, 1_000_000)  # 0: no limit
WORKERS = (1, 1024)  # a front-end's workers (--launch local)
JUMBO = (1, 256)  # workers sharing one event-service job
# the runner and eventclient hold one consumer slot per running job for its whole life (64 each):
# leave them room for kill and finish requests
MAX_SLOTS = 32


def _between(option: str, value: float, low: float, high: float, unit: str, zero_means: str = "") -> None:
    if zero_means and value == 0:
        return
    if not (math.isfinite(value) and low <= value <= high):
        also = f", or 0 for {zero_means}" if zero_means else ""
        raise ValueError(f"{option} {value:.10g}: must be between {low:.10g} and {high:.10g}{unit}{also}")


def check_heartbeat(heartbeat_s: float) -> None:
    _between("--heartbeat", heartbeat_s, *HEARTBEAT_S, " s")


def check_lifetime(lifetime_s: float) -> None:
    _between("--lifetime", lifetime_s, *LIFETIME_S, " s", zero_means="no limit")


def check_max_jobs(max_jobs: int) -> None:
    _between("--max-jobs", max_jobs, *MAX_JOBS, "")


def check_frontend(lifetime_s: float, workers: int, jumbo: int) -> None:
    """The front-end's bounds: its workers' lifetime, how many it starts, how many share a jumbo job."""
    check_lifetime(lifetime_s)
    _between("--workers", workers, *WORKERS, "")
    _between("--jumbo", jumbo, *JUMBO, "")


def check_pilot(heartbeat_s: float, lifetime_s: float, max_jobs: int) -> None:
    """ValueError with one line naming the option and its bounds, for the first value out of them."""
    check_heartbeat(heartbeat_s)
    check_lifetime(lifetime_s)
    check_max_jobs(max_jobs)


def parse_slots(spec: str | int) -> int:
    """``--slots``: ``auto`` (one per core: 0 here), or a positive number. ValueError otherwise."""
    text = str(spec).strip().lower()
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--slots must be 'auto' or a positive number, not {spec!r}")
    if int(text) > MAX_SLOTS:
        raise ValueError(f"--slots {text}: at most {MAX_SLOTS} jobs at once per pilot")
    return int(text)
