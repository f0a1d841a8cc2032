"""Standalone mode (``nodepilot run``): one job from a file, updates appended to a JSONL file.

Each line is ``{"time": <epoch>, "fields": {...}}`` for a job update, or ``{"time": <epoch>,
"event_ranges": [...], "version": <int>}`` for an event-range update. There are no event ranges
to hand out: an event-service job gets its ranges from a file later.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from pathlib import Path
from typing import Any

from nodepilot.panda.client import ServerClient, UpdateReply
from nodepilot.panda.errors import ServerError
from nodepilot.panda.events import encode_updates, flatten_updates


def read_job_file(path: Path) -> Any:
    """The job file's JSON as written; ValueError in one line if it cannot be read or is no JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the job file {path}: {why}") from None


LASTING_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR})


class StandaloneClient(ServerClient):
    def __init__(self, job_file: str | Path, updates_file: str | Path) -> None:
        self.job_file = Path(job_file)
        self.updates_file = Path(updates_file)
        self._handed_out = False

    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self._handed_out:
            return None
        try:
            job = read_job_file(self.job_file)
        except ValueError as exc:
            raise ServerError(str(exc)) from exc
        self._handed_out = True
        return job  # as written, even if broken: parsing it is the pilot's job

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        await self._record({"time": time.time(), "fields": fields})
        return UpdateReply(command=None, status_code=0, raw={})

    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        return []

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        encode_updates(ranges)  # the same check as for a server
        await self._record({"time": time.time(), "event_ranges": ranges, "version": version})
        return {"Returns": [True] * len(flatten_updates(ranges, version)), "Commands": None}

    async def _record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str) + "\n"
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:  # a full disk may clear up; a file that may not be written will not
            raise ServerError(f"cannot write {self.updates_file}: {exc}",
                              retryable=exc.errno not in LASTING_ERRNOS) from exc

    def _append(self, line: str) -> None:
        self.updates_file.parent.mkdir(parents=True, exist_ok=True)
        with self.updates_file.open("a") as fh:
            fh.write(line)
