"""How long one step of a job may take before the monitor stops waiting for its service's answer.

The stager bounds each copy of a file by its own time-out (``transfer_timeout``: a base plus a rate
per MB, the same numbers its movers use) and retries a transient failure a bounded number of times
per endpoint; a stage request's deadline is the sum of those bounds over its files, as if every copy
ran one after the other and used every attempt (a generous, finite bound). The payload's deadline
is the job's wall time, or the slot's time budget, plus the time a kill takes.
"""

from __future__ import annotations

from collections.abc import Iterable

TRANSFER_TIMEOUT_BASE_S = 400.0  # per copy, whatever its size
TRANSFER_TIMEOUT_PER_MB_S = 1.0  # plus this per MB (10^6 bytes) of the file
TRANSFER_GRACE_S = 5.0  # a timed-out copy's thread gets this long to stop and clean up
STAGER_ATTEMPTS = 3  # per endpoint, on transient errors (the queue data's stager.attempts)
STAGER_BACKOFF_CAP_S = 30.0  # longest pause between two attempts (stager.backoff_cap_s)
STAGE_SETUP_S = 120.0  # the stager's own set-up of a request (copysetup, listing, checksums)
LOG_SIZE_GUESS = 2_000_000_000  # a log tarball's size is not known before it is made
PAYLOAD_NO_LIMIT_S = 7 * 86400.0  # a payload with neither a wall time nor a slot end
PAYLOAD_MARGIN_S = 300.0  # after the wall time: the watchdog's period, the kill's grace, the report
ANSWER_S = 300.0  # a request answered without any transfer or payload (es start/finish set-up)


def transfer_timeout(size: int | None) -> float:
    """One copy of a file of ``size`` bytes (None: unknown, taken as empty)."""
    return TRANSFER_TIMEOUT_BASE_S + TRANSFER_TIMEOUT_PER_MB_S * (size or 0) / 1e6


def stage_deadline(sizes: Iterable[int | None], endpoints: int = 1, attempts: int = STAGER_ATTEMPTS,
                   backoff_cap_s: float = STAGER_BACKOFF_CAP_S) -> float:
    """Seconds a stage request of files of these sizes may take at most."""
    per_try = max(1, attempts) * max(1, endpoints)
    return STAGE_SETUP_S + sum(per_try * (transfer_timeout(size) + TRANSFER_GRACE_S + backoff_cap_s)
                               for size in sizes)


def payload_deadline(max_walltime_s: float | None, until_slot_end_s: float | None) -> float:
    """Seconds a payload may run before the runner must have answered (its kill included)."""
    limits = [max(0.0, until_slot_end_s)] if until_slot_end_s is not None else []  # a slot already over: 0
    if max_walltime_s:  # 0 or None: the job has none
        limits.append(max_walltime_s)
    return (min(limits) if limits else PAYLOAD_NO_LIMIT_S) + PAYLOAD_MARGIN_S
