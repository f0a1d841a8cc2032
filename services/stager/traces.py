"""Transfer traces: one JSON record per file per attempt (docs/protocol.md section 8), POSTed to the
queue's trace URL by a background task, never by the transfer itself.

Every record is first appended to the Redis list ``stager:traces`` (the spool); the sender moves the
head to ``stager:traces:sending`` (BLMOVE, so a crash loses nothing: a restarted stager puts it back),
POSTs it with a short time-out and removes it once the server took it. While the trace server is down
(connection error, time-out, HTTP 408/429/5xx) the record goes back to the head of the spool and the
sender pauses (doubling up to ``trace_retry_cap_s``); any other HTTP error drops the record (it would
never be accepted). The spool keeps at most ``SPOOL_MAX`` records (the oldest go first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.stager.metrics import StagerMetrics
from services.stager.retry import backoff_delay

log = logging.getLogger(__name__)

SPOOL_KEY = "stager:traces"
SENDING_KEY = "stager:traces:sending"
SPOOL_MAX = 100_000
BLOCK_S = 30  # the sender's loop turns at least this often
RETRY_BASE_S = 0.5
RETRY_STATUSES = {408, 429}
EVENT_VERSION = "nodepilot"

# (direction, failure reason) -> clientState; success is DONE, direct access FOUND_ROOT
CLIENT_STATES = {
    ("in", "missing"): "NO_REPLICA", ("in", "size"): "FS_MISMATCH", ("out", "size"): "FS_MISMATCH",
    ("in", "adler32"): "AD_MISMATCH", ("out", "adler32"): "AD_MISMATCH",
    ("in", "md5"): "MD5_MISMATCH", ("out", "md5"): "MD5_MISMATCH",
    ("in", "timeout"): "CP_TIMEOUT", ("out", "timeout"): "CP_TIMEOUT",
    ("in", "nospace"): "NO_SPACE", ("out", "nospace"): "NO_REMOTE_SPACE",
}


def client_state(direction: str, status: str, reason: str = "") -> str:
    if status == "done":
        return "DONE"
    if status == "direct":
        return "FOUND_ROOT"
    default = "STAGEIN_ATTEMPT_FAILED" if direction == "in" else "STAGEOUT_ATTEMPT_FAILED"
    return CLIENT_STATES.get((direction, reason), default)


def host_ip(hostname: str) -> str:
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return ""


class Traces:
    """The spool and its sender. ``record`` is all a transfer ever calls: one Redis append."""

    def __init__(self, r: aioredis.Redis, url: str, timeout_s: float, retry_cap_s: float,
                 metrics: StagerMetrics, hostname: str, site: str) -> None:
        self.r, self.url, self.timeout_s, self.retry_cap_s = r, url, timeout_s, retry_cap_s
        self.metrics = metrics
        self.hostname = hostname
        self.common = {"eventVersion": EVENT_VERSION, "hostname": hostname, "ip": "", "localSite": site, "pq": site}
        # records to send now: a stager asked to retire waits for them (nodepilot/demand.py); not while the trace
        # server does not take them (they stay spooled for the next stager)
        self.sending = False
        self.on_idle: Callable[[], None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    async def record(self, fields: dict[str, Any]) -> None:
        """Spool one record (never raises: a trace is not worth failing a transfer for)."""
        if not self.enabled:
            return
        trace = {**self.common, "uuid": uuid.uuid4().hex, **fields}
        try:
            length = await self.r.rpush(SPOOL_KEY, json.dumps(trace, separators=(",", ":")))
            if length > SPOOL_MAX:
                await self.r.ltrim(SPOOL_KEY, -SPOOL_MAX, -1)
        except RedisError:
            log.exception("trace of %s not spooled", fields.get("filename"))
            self.metrics.traces.labels("dropped").inc()
            return
        self.metrics.traces.labels("spooled").inc()
        self.metrics.traces_spooled.set(min(length, SPOOL_MAX))
        self.sending = True

    async def run(self) -> None:
        """Deliver spooled records in order, for as long as the stager runs."""
        if not self.enabled:
            return
        import httpx  # only a stager with a trace URL needs it

        self.common["ip"] = await asyncio.to_thread(host_ip, self.hostname)  # a slow resolver holds up nothing
        failures = 0
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
                try:
                    await self._recover()
                    while True:
                        failures = await self._deliver_one(client, failures)
                except (RedisError, OSError):
                    failures += 1
                    log.exception("trace spool unreadable: trying again")
                    await asyncio.sleep(backoff_delay(failures, RETRY_BASE_S, self.retry_cap_s))

    async def _deliver_one(self, client: Any, failures: int) -> int:
        """Send the spool's head (waiting for one); returns the count of failed tries in a row."""
        raw = await self.r.blmove(SPOOL_KEY, SENDING_KEY, BLOCK_S, "LEFT", "RIGHT")
        if raw is None:
            return failures
        self.sending = True
        outcome = await self._post(client, raw)
        if outcome == "retry":
            await self.r.lmove(SENDING_KEY, SPOOL_KEY, "RIGHT", "LEFT")
            self._idle()
            await asyncio.sleep(backoff_delay(failures + 1, RETRY_BASE_S, self.retry_cap_s))
            return failures + 1
        await self.r.lrem(SENDING_KEY, 1, raw)
        self.metrics.traces.labels(outcome).inc()
        spooled = await self.r.llen(SPOOL_KEY)
        self.metrics.traces_spooled.set(spooled)
        if not spooled:
            self._idle()
        return 0

    def _idle(self) -> None:
        self.sending = False
        if self.on_idle is not None:
            self.on_idle()

    async def _recover(self) -> None:
        """A record a killed sender had taken goes back to the head of the spool."""
        while await self.r.lmove(SENDING_KEY, SPOOL_KEY, "RIGHT", "LEFT") is not None:
            pass
        self.metrics.traces_spooled.set(await self.r.llen(SPOOL_KEY))

    async def _post(self, client: Any, raw: str) -> str:
        import httpx

        try:
            reply = await client.post(self.url, content=raw, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            log.info("trace server %s unreachable (%s): record kept", self.url, exc.__class__.__name__)
            return "retry"
        if reply.is_success:
            return "sent"
        if reply.status_code in RETRY_STATUSES or reply.status_code >= 500:
            log.info("trace server %s answered %s: record kept", self.url, reply.status_code)
            return "retry"
        log.warning("trace server %s refused a record (%s): dropped: %.200s", self.url, reply.status_code, raw)
        return "dropped"

