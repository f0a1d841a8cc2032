"""Every Redis key and stream of the pilot, and the one way services talk over them.

Contract (one JSON object per stream entry, under the field ``data``):

- ``stager:requests``    monitor -> stager     {kind: stagein|stageout|stagelog, job_id, request_id, ...}
- ``runner:requests``    monitor -> runner     {action: run|kill, job_id, request_id, ...}
- ``eventclient:requests`` monitor -> eventclient
- ``job:<id>:events``    any service -> monitor  {type, service, request_id?, ...}; read with XREAD
- ``job:<id>``           hash, written by the monitor only (state, definition, timings, errors)
- ``pilot:jobs``         list of the job ids this pilot took, in order (monitor only)
- ``pilot:outbox``       stream of server updates not yet delivered (monitor only)
- ``runner:job:<id>:usage`` hash, the runner's latest sample of the payload tree (read by the watchdog)
- ``runner:tally``       hash, payloads ended in this pilot (finished, failed, by exit): the runner's counts

Work streams use consumer groups: at-least-once delivery, an entry is acknowledged only once
its handler finished, and a restarted consumer first re-reads its own pending entries.

Redis may go away for a moment (the launcher restarts a Redis that died): every client retries a
command that lost its connection, with back-off, for up to ~RECONNECT_S, and a consumer whose group
vanished (a Redis that came back without its data) creates it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger(__name__)

STAGER_REQUESTS = "stager:requests"
RUNNER_REQUESTS = "runner:requests"
EVENTCLIENT_REQUESTS = "eventclient:requests"
PILOT_JOBS = "pilot:jobs"
PILOT_OUTBOX = "pilot:outbox"
RUNNER_TALLY = "runner:tally"
STREAM_MAXLEN = 10_000
RECONNECT_RETRIES = 40  # back-off from 20 ms doubling to 1 s: ~35 s in all before a command fails


def job_key(job_id: int | str) -> str:
    return f"job:{job_id}"


def job_events(job_id: int | str) -> str:
    return f"job:{job_id}:events"


def service_state_key(service: str, job_id: int | str) -> str:
    """Private bookkeeping of one service for one job (idempotency markers)."""
    return f"{service}:job:{job_id}"


def runner_usage_key(job_id: int | str) -> str:
    """Hash with the runner's latest sample of a job's payload tree (the watchdog reads it)."""
    return f"{service_state_key('runner', job_id)}:usage"


def job_id_of(value: Any) -> int | None:
    """A message's job id if it is a positive integer (or its digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value) or None
    return None


def connect(url: str) -> aioredis.Redis:
    # no read time-out: our reads block on streams by design (redis-py 8 defaults to 5 s,
    # which would break every XREAD/XREADGROUP BLOCK longer than that); a dead server still
    # shows up at once as a closed socket, and the command is sent again on a new connection
    # (connection refused, socket missing and "loading the dataset" are retried alike)
    retry = Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.02), RECONNECT_RETRIES)
    # the version CLIENT SETINFO sends, given: redis-py would read its package metadata for every new
    # connection (~10 ms each, on the way to the first job too)
    driver = DriverInfo(lib_version=redis.__version__)
    return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=0, driver_info=driver,
                                   socket_timeout=None, socket_connect_timeout=10, retry=retry)


def missing_group(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def encode(message: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(message, separators=(",", ":"))}


def decode(fields: dict[str, str]) -> dict[str, Any]:
    try:
        value = json.loads(fields.get("data", "{}"))
    except json.JSONDecodeError:
        return {"_malformed": fields}
    return value if isinstance(value, dict) else {"_malformed": fields}


async def publish(r: aioredis.Redis, stream: str, message: dict[str, Any]) -> str:
    return await r.xadd(stream, encode(message), maxlen=STREAM_MAXLEN, approximate=True)


async def emit(r: aioredis.Redis, job_id: int | str, service: str, type_: str, **fields: Any) -> str:
    """Append one event of a service to a job's event stream (the monitor folds it into state)."""
    return await publish(r, job_events(job_id), {"type": type_, "service": service, **fields})


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
# answers a request whose handler raised (an error answer with a pilot error code on the job's stream)
FailureAnswer = Callable[[dict[str, Any], BaseException], Awaitable[None]]


class Consumer:
    """Reads a work stream through a consumer group and runs a handler per entry.

    Blocks on XREADGROUP (no polling). Entries left pending by a crashed instance of the same
    consumer are handled first; entries idle longer than ``claim_idle_ms`` at another consumer
    are claimed. Up to ``concurrency`` handlers run at once; each entry is acknowledged when
    its handler returns, or when it raised and ``on_error`` answered the request with an error
    (so no request vanishes unanswered); if that answer cannot be sent either, the entry stays
    pending and is delivered again. Entries in
    flight here are re-claimed by this consumer on every turn of its loop (which turns at
    least every ``block_ms``), so they never look idle to other consumers, however long their
    handler runs, and are never dispatched twice here.
    """

    def __init__(
        self,
        r: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        concurrency: int = 8,
        block_ms: int = 30_000,
        claim_idle_ms: int = 60_000,
        retry_s: float | None = None,
        on_error: FailureAnswer | None = None,
    ) -> None:
        self.r, self.stream, self.group, self.consumer = r, stream, group, consumer
        self.retry_s = retry_s  # None: a failed read ends run(); else read again after this pause
        self.handler, self.on_error = handler, on_error
        self.block_ms, self.claim_idle_ms = block_ms, claim_idle_ms
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()
        self.handled = 0
        self.on_settled: Callable[[], None] | None = None  # called after each request it handled
        self.closed = False  # its service stops: entries read from now on stay pending for the next instance

    def busy(self) -> bool:
        """Whether a request is in hand."""
        return bool(self._inflight)

    async def run(self) -> None:
        while True:
            try:
                await self._serve()
            except (RedisError, OSError) as exc:
                if missing_group(exc):  # _serve creates it first thing
                    log.warning("group %s of %s is gone: creating it again", self.group, self.stream)
                    self._inflight.clear()  # their entries are gone with it
                    continue
                if self.retry_s is None:
                    raise
                # handlers in flight go on: only reading stopped
                log.exception("cannot read %s: trying again in %s s", self.stream, self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _serve(self) -> None:
        await ensure_group(self.r, self.stream, self.group)
        await self._read("0")  # our own pending entries from before a restart
        while True:
            await self._refresh_inflight()
            await self._claim_stale()
            await self._read(">")

    async def _read(self, start: str) -> None:
        block = self.block_ms if start == ">" else None
        reply = await self.r.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=64, block=block
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # a pending entry that was trimmed away has no fields
                    await self._dispatch(entry_id, decode(fields))
                else:
                    await self.r.xack(self.stream, self.group, entry_id)

    async def _refresh_inflight(self) -> None:
        if self._inflight:
            await self.r.xclaim(self.stream, self.group, self.consumer, 0, list(self._inflight), justid=True)

    async def _claim_stale(self) -> None:
        _next, claimed, *_ = await self.r.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=64
        )
        for entry_id, fields in claimed:
            if fields and entry_id not in self._inflight:
                await self._dispatch(entry_id, decode(fields))

    async def _dispatch(self, entry_id: str, message: dict[str, Any]) -> None:
        if entry_id in self._inflight or self.closed:
            return
        self._inflight.add(entry_id)
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(entry_id, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, entry_id: str, message: dict[str, Any]) -> None:
        try:
            await self.handler(entry_id, message)
        except asyncio.CancelledError:
            raise  # not acknowledged: redelivered to the next instance
        except Exception as exc:
            log.exception("handler of %s failed on %s", self.stream, entry_id)
            if not await self._answer_failure(entry_id, message, exc):
                self._settle(entry_id)  # stays pending: delivered again once idle
                return
        finally:
            self._slots.release()
        try:
            await self.r.xack(self.stream, self.group, entry_id)
        finally:  # not acknowledged (Redis gone): no longer kept fresh, so it is delivered again later
            self._settle(entry_id)
        self.handled += 1

    def _settle(self, entry_id: str) -> None:
        self._inflight.discard(entry_id)
        if self.on_settled is not None:
            self.on_settled()

    async def _answer_failure(self, entry_id: str, message: dict[str, Any], exc: BaseException) -> bool:
        """Whether the failed request may be acknowledged (answered, or nobody to answer it)."""
        if self.on_error is None:
            return True
        try:
            await self.on_error(message, exc)
        except Exception:
            log.exception("cannot answer the failed request %s of %s: it stays pending", entry_id, self.stream)
            return False
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel the handlers in flight (their entries stay pending for the next instance)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


async def read_events(
    r: aioredis.Redis, job_id: int | str, after: str, block_ms: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """Events of one job after entry id ``after``; blocks until at least one arrives."""
    reply = await r.xread({job_events(job_id): after}, count=256, block=block_ms)
    return [(entry_id, decode(fields)) for _s, entries in reply or [] for entry_id, fields in entries]
