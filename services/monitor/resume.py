"""What a restarted monitor finds in Redis: the jobs its predecessor took, and how far each got.

The launcher restarts a monitor that died (killed, crashed). The new one reads ``pilot:jobs`` and
each job's hash: a job whose final update was delivered only counts (``--max-jobs``, the exit code,
summary.json); the one that was still running is run again from its definition with the same
request ids. Every service does a request id once and its answers are still in the job's event
stream, so the replay finds each step's answer at once and goes on from the first step that had
not ended: stage-in is not redone, the payload is not started twice (a running one is waited for),
and the job ends with its own result and one final update.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus

log = logging.getLogger(__name__)

FINAL_STATES = ("finished", "failed")


@dataclass
class PreviousJob:
    panda_id: int
    definition: dict[str, Any] | None  # None: unreadable (the job cannot be resumed)
    result: dict[str, Any]  # the JobResult as last saved ({} if none)

    @property
    def done(self) -> bool:
        return self.result.get("state") in FINAL_STATES and bool(self.result.get("final_delivered"))


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


async def previous_jobs(r: aioredis.Redis) -> list[PreviousJob]:
    """The jobs of this pilot so far, in order (empty for a monitor that is the first one)."""
    jobs: list[PreviousJob] = []
    seen: set[int] = set()
    for raw_id in await r.lrange(bus.PILOT_JOBS, 0, -1):
        panda_id = bus.job_id_of(raw_id)
        if panda_id is None or panda_id in seen:
            continue
        seen.add(panda_id)
        fields = await r.hgetall(bus.job_key(panda_id))
        definition, result = _json(fields.get("definition")), _json(fields.get("result"))
        jobs.append(PreviousJob(panda_id, definition if isinstance(definition, dict) else None,
                                result if isinstance(result, dict) else {}))
    return jobs
