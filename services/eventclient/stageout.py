"""Outputs to the stager, and the stager's answers back from the job's event stream.

A ``stageout`` request carries one upload (``uploads.py``: the outputs of one or more ranges, or
one zip of them), request_id ``<job>:es:<key>`` where the key is the id of the upload's first
range; the answers are the ``stageout_done`` events of those request ids on ``job:<id>:events``,
read with our own position (the monitor reads the same stream with its own).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus

log = logging.getLogger(__name__)

READ_BLOCK_MS = 5_000  # a cancelled read ends by itself within this, whatever redis-py does

OnAnswers = Callable[[list[tuple[str, dict[str, Any]]], str], Awaitable[None]]


class Stageout:
    def __init__(self, r: aioredis.Redis, job_id: int, workdir: Path, endpoints: list[dict[str, str]],
                 scope: str) -> None:
        self.r, self.job_id, self.workdir = r, job_id, workdir
        self.endpoints, self.scope = endpoints, scope
        self.prefix = f"{job_id}:es:"

    async def request(self, key: str, files: list[tuple[str, str]]) -> None:
        """One stageout request for ``files`` (lfn, guid) of the work dir."""
        ddm = self.endpoints[0]["name"] if self.endpoints else ""
        await bus.publish(self.r, bus.STAGER_REQUESTS, {
            "kind": "stageout", "job_id": self.job_id, "request_id": self.prefix + key,
            "workdir": str(self.workdir), "endpoints": self.endpoints,
            "files": [{"lfn": lfn, "scope": self.scope, "guid": guid, "dataset": "", "ddm_endpoint": ddm}
                      for lfn, guid in files],
        })

    async def position(self) -> str:
        """The job stream's last entry now: answers to requests sent from here on come after it."""
        last = await self.r.xrevrange(bus.job_events(self.job_id), count=1)
        return last[0][0] if last else "0-0"

    async def follow(self, after: str, on_answers: OnAnswers) -> None:
        """Hand the answers to our requests after ``after`` to ``on_answers`` (key, event) with the
        last entry read (to be saved as the new position), as they come, forever."""
        while True:
            events = await bus.read_events(self.r, self.job_id, after, block_ms=READ_BLOCK_MS)
            if not events:
                continue
            answers = []
            for _entry_id, event in events:
                request_id = str(event.get("request_id") or "")
                if event.get("type") == "stageout_done" and request_id.startswith(self.prefix):
                    answers.append((request_id.removeprefix(self.prefix), event))
            after = events[-1][0]
            await on_answers(answers, after)
