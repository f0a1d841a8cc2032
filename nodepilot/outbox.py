"""Server updates: what a heartbeat and a final update carry, and their in-order delivery.

Updates are written to the ``pilot:outbox`` stream before they are sent and removed once the
server took them, so an update is never lost while the pilot lives (store-and-forward), and
they go out strictly in order, one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus, retry
from nodepilot.panda.client import ServerClient, UpdateReply
from nodepilot.panda.errors import ServerError

log = logging.getLogger(__name__)


class DeliveryAbandoned(Exception):
    """No update could be delivered for longer than the give-up time (pilot error 1318)."""


class Outbox:
    def __init__(self, r: aioredis.Redis, client: ServerClient, give_up_s: float = retry.UPDATE_DELIVERY.budget_s,
                 on_reply: Any = None) -> None:
        self.r, self.client, self.give_up_s = r, client, give_up_s
        self.on_reply = on_reply  # async callable(fields, reply) for server commands
        self._wake = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self.last_delivery = time.monotonic()
        self.delivered = 0

    async def put(self, fields: dict[str, Any]) -> asyncio.Future[bool]:
        """Queue an update; the future says whether the server took it (False: rejected)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry_id = await bus.publish(self.r, bus.PILOT_OUTBOX, fields)
        self._waiters[entry_id] = future
        self._wake.set()
        return future

    async def send(self, fields: dict[str, Any]) -> bool:
        """Queue an update and wait until it was delivered (True) or rejected (False)."""
        return await (await self.put(fields))

    async def flush(self) -> None:
        """Wait until every update queued so far is delivered or rejected."""
        pending = [f for f in self._waiters.values() if not f.done()]
        if pending:
            await asyncio.gather(*pending)

    async def run(self) -> None:
        """Sender task: delivers queued updates in order, retrying with back-off."""
        try:
            while True:
                self._wake.clear()
                entries = await self.r.xrange(bus.PILOT_OUTBOX, count=16)
                if not entries:
                    await self._wake.wait()
                    continue
                for entry_id, raw in entries:
                    fields = bus.decode(raw)
                    reply = await self._deliver(fields)
                    await self.r.xdel(bus.PILOT_OUTBOX, entry_id)
                    future = self._waiters.pop(entry_id, None)
                    if future is not None and not future.done():
                        future.set_result(reply is not None)
                    if reply is not None and self.on_reply:
                        await self.on_reply(fields, reply)
        except DeliveryAbandoned as exc:
            for future in self._waiters.values():
                if not future.done():
                    future.set_exception(exc)
            raise

    async def _deliver(self, fields: dict[str, Any]) -> UpdateReply | None:
        """One update, sent until the server takes or rejects it, pausing by retry.UPDATE_DELIVERY; its
        budget counts from the last update delivered (``give_up_s``): the server is away that long."""
        failures = 0
        while True:
            try:
                reply = await self.client.update_job(fields)
                self.last_delivery = time.monotonic()
                self.delivered += 1
                return reply
            except ServerError as exc:
                if not exc.retryable:
                    log.error("update of job %s (%s) rejected by the server: %s", fields.get("jobId"),
                              fields.get("state"), exc)
                    return None
                waited = time.monotonic() - self.last_delivery
                if waited > self.give_up_s:
                    raise DeliveryAbandoned(f"no update delivered for {waited:.0f} s: {exc}") from exc
                failures += 1
                pause = max(retry.UPDATE_DELIVERY.pause(failures), getattr(exc, "retry_after", 0.0))
                log.warning("update of job %s not delivered (%s); retry in %.1f s (%.0f s of %.0f s without a "
                            "delivery)", fields.get("jobId"), exc, pause, waited, self.give_up_s)
                await asyncio.sleep(pause)


def jobmetrics(items: dict[str, Any], limit: int = 500) -> str:
    """Space-separated key=value, at most 500 characters (whole pairs only)."""
    out = ""
    for key, value in items.items():
        if value in (None, ""):
            continue
        pair = f"{key}={value}"
        if len(out) + len(pair) + (1 if out else 0) > limit:
            break
        out = f"{out} {pair}" if out else pair
    return out


def pilot_timing(timings: dict[str, float]) -> str:
    keys = ("getjob", "stagein", "payload", "stageout", "initial_setup", "setup")
    return "|".join(str(round(timings.get(k, 0.0))) for k in keys)


def file_report(files: list[dict[str, Any]]) -> str:
    """The ``xml`` field: JSON {lfn: {guid, fsize, adler32, surl, endpoint}} of staged files."""
    report = {}
    for f in files:
        if f.get("status") != "done":
            continue
        checksum = f.get("checksum") or ""
        report[f["lfn"]] = {
            "guid": f.get("guid", ""),
            "fsize": f.get("fsize"),
            "adler32": checksum.split(":", 1)[1] if checksum.startswith("ad:") else checksum,
            "surl": f.get("surl", ""),
            "endpoint": f.get("endpoint", ""),
        }
    return json.dumps(report) if report else ""
