"""Which finished outputs go to the stager together, and when.

Outputs are sent in batches: a batch goes when it is full, when its first output has waited long
enough, or when the job ends, and while fewer than ``MAX_IN_FLIGHT`` batches are at the stager
(back-pressure: more outputs wait and go together). Per-range files (the default): up to
``FILES_PER_REQUEST`` outputs per stageout request, waiting at most ``GATHER_S`` (a fast payload's
outputs go by the dozen, a slow one's one at a time, a moment after each finishes). Zipped batches
(``zip_outputs: K``): ``K`` outputs, or fewer ``zip_seconds`` after the first of them finished, go
into one zip, staged out once.

An upload is saved in its ranges (``upload``: its key, the id of its first range; ``zip``) before
its request goes out, so a restarted eventclient sends the same request again (the stager does a
request id once) and rebuilds a zip that was not complete.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nodepilot.errors import ErrorCode
from services.eventclient.ranges import RangeRecord, RangeStore
from services.eventclient.stageout import Stageout
from services.eventclient.zips import build_zip, zip_name

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # batches at the stager at once
FILES_PER_REQUEST = 64
GATHER_S = 0.05  # how long a lone output waits for others to go with it (the payload never waits for it)

OnAnswer = Callable[[str, dict[str, Any]], Awaitable[None]]


class Uploads:
    def __init__(self, store: RangeStore, stageout: Stageout, workdir: Path, zip_outputs: int,
                 zip_seconds: float, closing: Callable[[], bool], on_answer: OnAnswer) -> None:
        self.store, self.stageout, self.workdir = store, stageout, workdir
        self.zip_outputs = zip_outputs
        self.batch, self.wait_s = (zip_outputs, zip_seconds) if zip_outputs else (FILES_PER_REQUEST, GATHER_S)
        self.closing, self.on_answer = closing, on_answer
        self.pending: dict[str, RangeRecord] = {}  # done, in no upload yet, in order of finishing
        self.in_flight: dict[str, list[RangeRecord]] = {}  # key -> the ranges it carries
        self.requests = self.outputs = 0  # sent by this instance

    def load(self) -> None:
        """What the store says was waiting or in flight (after a restart)."""
        self.pending.clear()
        self.in_flight.clear()
        for rec in self.store.in_state("done"):
            if rec.upload:
                self.in_flight.setdefault(rec.upload, []).append(rec)
            else:
                self.pending[rec.id] = rec

    def add(self, rec: RangeRecord) -> None:
        """A range just saved as ``done``."""
        self.pending[rec.id] = rec

    def answered(self, key: str) -> list[RangeRecord]:
        """The ranges of an upload the stager answered (none for an answer seen before)."""
        return self.in_flight.pop(key, [])

    # --- when ----------------------------------------------------------------------------------
    def _due(self) -> bool:
        if not self.pending:
            return False
        if self.closing():
            return True
        return len(self.in_flight) < MAX_IN_FLIGHT and (
            len(self.pending) >= self.batch or self._oldest_wait() >= self.wait_s)

    def _oldest_wait(self) -> float:
        return time.time() - next(iter(self.pending.values())).changed

    async def run(self) -> None:
        for key, members in list(self.in_flight.items()):  # sent before a restart (or a failure of this task)
            await self._send(key, members)
        while True:
            if not self.pending:
                await self.store.wait_for(lambda: bool(self.pending))
            # until the batch is due, or its first output has waited long enough (then: until a batch
            # in flight is answered, if there are too many)
            remaining = self.wait_s - self._oldest_wait()
            await self.store.wait_for(self._due, remaining if remaining > 0 else None)
            if self._due():
                await self._next()

    async def _next(self) -> None:
        async with self.store.lock:
            members = list(itertools.islice(self.pending.values(), self.batch))
            key = members[0].id
            name = zip_name(self.stageout.job_id, key) if self.zip_outputs else ""
            for rec in members:
                rec.upload, rec.zip = key, name
                del self.pending[rec.id]
            self.in_flight[key] = members
            await self.store.save(*members)
        await self._send(key, members)

    # --- how -----------------------------------------------------------------------------------
    async def _send(self, key: str, members: list[RangeRecord]) -> None:
        self.requests, self.outputs = self.requests + 1, self.outputs + len(members)
        name = members[0].zip
        if not name:
            await self.stageout.request(key, [(rec.output, rec.guid) for rec in members])
            return
        try:
            await asyncio.to_thread(build_zip, self.workdir, name, [rec.output for rec in members])
        except OSError as exc:  # the upload fails as if the stager had said so
            code = ErrorCode.MISSING_OUTPUT if isinstance(exc, FileNotFoundError) else ErrorCode.STAGEOUT_FAILED
            log.warning("job %s: zip %s of %d outputs failed: %r", self.stageout.job_id, name, len(members), exc)
            await self.on_answer(key, {"ok": False, "files": [], "error_code": code,
                                       "diag": f"cannot make the zip {name}: {exc}"})
            return
        guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"nodepilot:{self.stageout.job_id}:{name}"))
        await self.stageout.request(key, [(name, guid)])
