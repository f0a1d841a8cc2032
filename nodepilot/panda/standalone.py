"""Standalone mode (``nodepilot run``): one job from a file, updates appended to a JSONL file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from nodepilot.panda.client import ServerClient, ServerError, UpdateReply


class StandaloneClient(ServerClient):
    def __init__(self, job_file: str | Path, updates_file: str | Path) -> None:
        self.job_file = Path(job_file)
        self.updates_file = Path(updates_file)
        self._handed_out = False

    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self._handed_out:
            return None
        try:
            job = json.loads(self.job_file.read_text())
        except (OSError, ValueError) as exc:
            raise ServerError(f"cannot read the job file {self.job_file}: {exc}") from exc
        self._handed_out = True
        return job  # as written, even if broken: parsing it is the pilot's job

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        line = json.dumps({"time": time.time(), "fields": fields}, default=str) + "\n"
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise ServerError(f"cannot write {self.updates_file}: {exc}", retryable=True) from exc
        return UpdateReply(command=None, status_code=0, raw={})

    def _append(self, line: str) -> None:
        self.updates_file.parent.mkdir(parents=True, exist_ok=True)
        with self.updates_file.open("a") as fh:
            fh.write(line)
