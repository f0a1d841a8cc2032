"""What a job's steps share, declared once for the step mixins of ``JobRun`` (stage_steps.py,
es_steps.py): the job, the pilot's settings, Redis, the job's outcome, its work dir and what the
payload's run returned."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from nodepilot.config import PilotConfig
from nodepilot.job import Job
from services.monitor.result import JobResult


class JobParts:
    job: Job
    config: PilotConfig
    r: aioredis.Redis
    result: JobResult
    workdir: Path
    payload: dict[str, Any]

    if TYPE_CHECKING:  # JobRun's
        def _request_id(self, step: str) -> str: ...
        async def wait_for(self, request_id: str, type_: str, deadline_s: float = ...) -> dict[str, Any]: ...
