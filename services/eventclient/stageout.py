"""Per-range outputs to the stager, and the stager's answers back from the job's event stream.

One ``stageout`` request per finished range (request_id ``<job>:es:<range id>``, one file); the
answers are the ``stageout_done`` events of those request ids on ``job:<id>:events``, read with
our own position (the monitor reads the same stream with its own).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus
from services.eventclient.ranges import RangeRecord

log = logging.getLogger(__name__)

READ_BLOCK_MS = 5_000  # a cancelled read ends by itself within this, whatever redis-py does

OnAnswer = Callable[[str, dict[str, Any]], Awaitable[None]]
SavePosition = Callable[[str], Awaitable[None]]


class Stageout:
    def __init__(self, r: aioredis.Redis, job_id: int, workdir: Path, endpoints: list[dict[str, str]],
                 scope: str) -> None:
        self.r, self.job_id, self.workdir = r, job_id, workdir
        self.endpoints, self.scope = endpoints, scope
        self.prefix = f"{job_id}:es:"

    def request_id(self, range_id: str) -> str:
        return self.prefix + range_id

    async def request(self, rec: RangeRecord) -> None:
        ddm = self.endpoints[0]["name"] if self.endpoints else ""
        await bus.publish(self.r, bus.STAGER_REQUESTS, {
            "kind": "stageout", "job_id": self.job_id, "request_id": self.request_id(rec.id),
            "workdir": str(self.workdir), "endpoints": self.endpoints,
            "files": [{"lfn": rec.output, "scope": self.scope, "guid": rec.guid, "dataset": "",
                       "ddm_endpoint": ddm}],
        })

    async def position(self) -> str:
        """The job stream's last entry now: answers to requests sent from here on come after it."""
        last = await self.r.xrevrange(bus.job_events(self.job_id), count=1)
        return last[0][0] if last else "0-0"

    async def follow(self, after: str, on_answer: OnAnswer, save_position: SavePosition) -> None:
        """Hand every answer to one of our requests after ``after`` to ``on_answer``, forever."""
        while True:
            events = await bus.read_events(self.r, self.job_id, after, block_ms=READ_BLOCK_MS)
            for entry_id, event in events:
                request_id = str(event.get("request_id") or "")
                if event.get("type") == "stageout_done" and request_id.startswith(self.prefix):
                    await on_answer(request_id.removeprefix(self.prefix), event)
                after = entry_id
            if events:
                await save_position(after)
