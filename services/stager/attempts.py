"""One file over its endpoints: attempts with back-off on transient errors, then the next endpoint.

Per endpoint, up to ``attempts`` tries while the mover's error is transient (the pause doubles, with
jitter, from ``backoff_s`` up to ``backoff_cap_s``); a final error moves on to the next endpoint at
once, except a failure on the worker node's own side (disk full, output missing) that no other
endpoint would cure. Alternatives (every endpoint after the first) are tried only when ``alternatives``
allows it; the diag says what was tried and why something was not. Each attempt is one trace record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from nodepilot import retry as policies
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import FileSpec
from nodepilot.queue.model import Endpoint
from services.stager.metrics import StagerMetrics
from services.stager.movers.base import Mover, Reason, TransferError, mover_for
from services.stager.paths import join_url
from services.stager.request import FileResult, Request
from services.stager.retry import backoff_delay
from services.stager.settings import StagerSettings
from services.stager.traces import Traces, client_state

log = logging.getLogger(__name__)


class StagerParts(Protocol):
    """What a transfer uses of the stager: its settings, the pilot-wide transfer slots, metrics,
    traces and the set of transfers under way (the status view)."""

    settings: StagerSettings
    slots: asyncio.Semaphore
    stats: StagerMetrics
    traces: Traces
    transfers: set[Transfer]

IN_CODES = {
    Reason.MISSING: ErrorCode.STAGEIN_FAILED, Reason.SIZE: ErrorCode.STAGEIN_FAILED,
    Reason.ADLER32: ErrorCode.ADLER32_MISMATCH_IN, Reason.MD5: ErrorCode.MD5_MISMATCH_IN,
    Reason.TIMEOUT: ErrorCode.STAGEIN_TIMEOUT, Reason.NOSPACE: ErrorCode.DISK_SPACE,
    Reason.IO: ErrorCode.STAGEIN_FAILED, Reason.PROTOCOL: ErrorCode.NO_STORAGE_PROTOCOL,
}
OUT_CODES = {
    Reason.MISSING: ErrorCode.MISSING_OUTPUT, Reason.SIZE: ErrorCode.STAGEOUT_FAILED,
    Reason.ADLER32: ErrorCode.ADLER32_MISMATCH_OUT, Reason.MD5: ErrorCode.MD5_MISMATCH_OUT,
    Reason.TIMEOUT: ErrorCode.STAGEOUT_TIMEOUT, Reason.NOSPACE: ErrorCode.STAGEOUT_FAILED,
    Reason.IO: ErrorCode.STAGEOUT_FAILED, Reason.PROTOCOL: ErrorCode.NO_STORAGE_PROTOCOL,
}
# failures on the worker node's side: another endpoint would not help
LOCAL_REASONS = {"in": {Reason.NOSPACE}, "out": {Reason.MISSING}}


@dataclass
class Moved:
    """What a successful attempt reports."""

    fsize: int | None
    adler32: str = ""  # hex; empty when unknown (direct access without a checksum query)
    status: str = "done"  # done | direct


@dataclass(eq=False)
class Transfer:
    """One file in flight, as /status shows it."""

    job_id: int
    lfn: str
    direction: str  # in | out
    size: int | None
    endpoint: str
    attempt: int
    bytes_done: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def progress(self, done: int) -> None:
        self.bytes_done = done

    def view(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {"job_id": self.job_id, "lfn": self.lfn, "direction": self.direction, "endpoint": self.endpoint,
                "attempt": self.attempt, "bytes_done": self.bytes_done, "size": self.size,
                "rate_bytes_s": round(self.bytes_done / elapsed, 1)}


# one try at one URL: (mover, url, transfer) -> Moved, or TransferError
Attempt = Callable[[Mover, str, Transfer], Awaitable[Moved]]


@dataclass
class FileWork:
    """One file to move, and where."""

    request: Request
    spec: FileSpec
    size: int | None  # known beforehand (the input's fsize, the output's size on disk)
    endpoints: list[Endpoint]
    relative: str  # path under each endpoint
    alternatives: bool = True
    why_no_alternatives: str = ""

    @property
    def direction(self) -> str:
        return self.request.direction


async def over_endpoints(stager: StagerParts, work: FileWork, attempt: Attempt) -> FileResult:
    """Move one file: the first endpoint that succeeds wins."""
    codes = IN_CODES if work.direction == "in" else OUT_CODES
    result = FileResult(work.spec.lfn, guid=work.spec.guid)
    if not work.endpoints:
        result.error_code, result.diag = codes[Reason.IO], f"no storage endpoint given for {work.spec.lfn}"
        return result
    time_start = time.time()
    tried = work.endpoints if work.alternatives else work.endpoints[:1]
    failures: list[str] = []
    local_failure = False
    for i, endpoint in enumerate(tried):
        where = f"{'primary' if i == 0 else 'alternative'} endpoint {endpoint.name}"
        url = join_url(endpoint.url, work.relative)
        moved, errors = await _on_endpoint(stager, work, endpoint, url, attempt, time_start)
        result.attempts += len(errors) + (moved is not None)
        if moved is not None:
            result.status, result.error_code = moved.status, 0
            result.fsize, result.checksum = moved.fsize, f"ad:{moved.adler32}" if moved.adler32 else ""
            result.surl, result.endpoint = url, endpoint.name
            if moved.status == "direct":
                result.turl = url
            notes = [*failures, *([_retried(where, errors)] if errors else [])]
            if i > 0:
                verb = "stored on" if work.direction == "out" else "read from"
                notes.append(f"{verb} {where}")
            result.diag = clip_diag("; ".join(notes))
            return result
        last = errors[-1]
        result.error_code = codes.get(last.reason, codes[Reason.IO])
        failures.append(_failed(where, errors))
        if last.reason in LOCAL_REASONS[work.direction]:
            local_failure = True
            break
    if not work.alternatives and len(work.endpoints) > 1 and not local_failure:
        failures.append(f"alternative stage-out not tried ({work.why_no_alternatives}): "
                        f"{', '.join(e.name for e in work.endpoints[1:])}")
    alone = len(work.endpoints) == 1 and result.attempts == 1
    result.diag = clip_diag(last.diag if alone else "; ".join(failures))
    return result


# a diag made of several parts keeps room for each (the server keeps 500 characters in all)
PART_LIMIT = 200


def _failed(where: str, errors: list[TransferError]) -> str:
    tries = f" ({len(errors)} attempts)" if len(errors) > 1 else ""
    return f"{where}{tries}: {clip_diag(errors[-1].diag, PART_LIMIT)}"


def _retried(where: str, errors: list[TransferError]) -> str:
    return f"{where} succeeded at attempt {len(errors) + 1} after: {clip_diag(errors[-1].diag, PART_LIMIT)}"


async def _on_endpoint(stager: StagerParts, work: FileWork, endpoint: Endpoint, url: str, attempt: Attempt,
                       time_start: float) -> tuple[Moved | None, list[TransferError]]:
    """Up to ``attempts`` tries at one URL while errors are transient and retry.TRANSFER's budget lasts
    (no retry starts past it); the errors met on the way."""
    settings = stager.settings
    errors: list[TransferError] = []
    budget = policies.Budget(policies.TRANSFER)
    for n in range(1, settings.attempts + 1):
        if n > 1:
            if budget.left() <= 0:
                log.warning("job %s: %s of %s via %s: no retry, the %.0f s budget of %s is spent",
                            work.request.job_id, work.direction, work.spec.lfn, endpoint.name,
                            policies.TRANSFER.budget_s, policies.TRANSFER.kind)
                break
            stager.stats.retries.labels(work.direction).inc()
            await asyncio.sleep(backoff_delay(n - 1, settings.backoff_s, settings.backoff_cap_s))
        started = time.time()
        try:
            moved = await _once(stager, work, endpoint, url, n, attempt)
        except TransferError as exc:
            errors.append(exc)
            await _trace(stager, work, endpoint, url, n, time_start, started, error=exc)
            log.warning("job %s: %s of %s via %s, attempt %d failed%s: %s", work.request.job_id, work.direction,
                        work.spec.lfn, endpoint.name, n, " (transient)" if exc.transient else "", exc.diag)
            if not exc.transient:
                break
        else:
            await _trace(stager, work, endpoint, url, n, time_start, started, moved=moved)
            return moved, errors
    return None, errors


async def _once(stager: StagerParts, work: FileWork, endpoint: Endpoint, url: str, n: int,
                attempt: Attempt) -> Moved:
    """One attempt, within the pilot-wide bound on transfers, counted and shown in /status."""
    scheme = urlsplit(url).scheme.lower() or "none"
    transfer = Transfer(work.request.job_id, work.spec.lfn, work.direction, work.size, endpoint.name, n)
    async with stager.slots:
        stager.transfers.add(transfer)
        stager.stats.in_flight.inc()
        started = time.monotonic()
        try:
            moved = await attempt(mover_for(url), url, transfer)
        except TransferError:
            stager.stats.attempts.labels(work.direction, "failed", scheme).inc()
            raise
        except Exception as exc:  # a mover's bug fails this attempt, not the request
            log.exception("job %s: %s of %s via %s failed", work.request.job_id, work.direction, work.spec.lfn,
                          endpoint.name)
            stager.stats.attempts.labels(work.direction, "failed", scheme).inc()
            raise TransferError(Reason.IO, f"unexpected error: {exc!r}") from None
        finally:
            stager.transfers.discard(transfer)
            stager.stats.in_flight.dec()
    stager.stats.attempts.labels(work.direction, moved.status, scheme).inc()
    if moved.status == "done":
        stager.stats.bytes.labels(work.direction, scheme).inc(moved.fsize or 0)
        stager.stats.seconds.labels(work.direction, scheme).observe(time.monotonic() - started)
    return moved


async def _trace(stager: StagerParts, work: FileWork, endpoint: Endpoint, url: str, n: int, time_start: float,
                 started: float, moved: Moved | None = None, error: TransferError | None = None) -> None:
    if not stager.traces.enabled:
        return
    spec, request = work.spec, work.request
    status = moved.status if moved is not None else "failed"
    checksum = f"ad:{moved.adler32}" if moved is not None and moved.adler32 else str(spec.checksum or "")
    await stager.traces.record({
        "eventType": "get_sm" if work.direction == "in" else "put_sm",
        "clientState": client_state(work.direction, status, error.reason if error else ""),
        "stateReason": "OK" if error is None else clip_diag(error.diag),
        "scope": spec.scope, "dataset": spec.dataset, "filename": spec.lfn, "guid": spec.guid,
        "filesize": moved.fsize if moved is not None and moved.fsize is not None else work.size,
        "checksum": checksum, "url": url, "remoteSite": endpoint.name, "protocol": urlsplit(url).scheme,
        "appid": request.job_id, "PandaID": request.job_id, "taskid": request.task_id, "attempt": n,
        "timeStart": round(time_start, 3), "transferStart": round(started, 3), "timeEnd": round(time.time(), 3),
    })
