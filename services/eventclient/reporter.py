"""Range status back to the source, in batches: every ``batch`` reportable ranges or ``interval_s``
after the first one waits, whichever comes first (a timer woken by changes, not a poll).

Staged outputs go as version 1 (one zipFile record each, eventStatus ``finished``); payload
failures and failed uploads as version 0 (eventStatus ``failed`` with an errorCode). A range is
marked ``reported`` in Redis before its report is sent, so it is never sent twice; if the send
fails the ranges go back to what they were and join the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nodepilot.errors import ErrorCode
from services.eventclient.ranges import REPORTABLE, RangeRecord, RangeStore
from services.eventclient.sources import RangeSource

log = logging.getLogger(__name__)

FINAL_ATTEMPTS = 3


def zip_record(rec: RangeRecord) -> dict[str, Any]:
    file = rec.file or {}
    checksum = str(file.get("checksum") or "")
    return {
        "zipFile": {"lfn": rec.output, "fsize": file.get("fsize"),
                    "adler32": checksum.removeprefix("ad:"), "numEvents": rec.num_events},
        "eventRanges": [{"eventRangeID": rec.id, "eventStatus": "finished"}],
    }


def failed_record(rec: RangeRecord) -> dict[str, Any]:
    return {"eventRangeID": rec.id, "eventStatus": "failed",
            "errorCode": int(rec.error_code or ErrorCode.ES_RECOVERABLE)}


class Reporter:
    def __init__(self, store: RangeStore, source: RangeSource, batch: int, interval_s: float) -> None:
        self.store, self.source = store, source
        self.batch, self.interval_s = max(1, batch), max(0.0, interval_s)
        self.failures = 0
        self._flushing = asyncio.Lock()  # one flush at a time: the final one waits for a running one

    def pending(self) -> int:
        return self.store.count(*REPORTABLE)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.store.wait_for(lambda: self.pending() > 0)
            deadline = loop.time() + self.interval_s
            await self.store.wait_for(lambda: self.pending() >= self.batch, deadline - loop.time())
            # shielded: stopping the reporter never cuts a report in half; flush_final waits for it
            if not await asyncio.shield(self.flush()):
                await asyncio.sleep(self.interval_s or 1.0)  # the source is in trouble: not at once again

    async def flush(self) -> bool:
        """Report every reportable range now; True if everything went through."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        async with self.store.lock:
            staged = self.store.in_state("staged")
            failed = self.store.in_state("failed", "stage_failed")
            for rec in staged + failed:
                result = "finished" if rec.state == "staged" else "failed"
                self.store.set_state(rec, "reported", result=result, before_report=rec.state)
            await self.store.save(*staged, *failed)
        ok = True
        if staged:
            ok &= await self._send([zip_record(r) for r in staged], 1, staged)
        if failed:
            ok &= await self._send([failed_record(r) for r in failed], 0, failed)
        return ok

    async def flush_final(self) -> bool:
        """The last reports of a job: a few attempts, bounded."""
        for attempt in range(FINAL_ATTEMPTS):
            if await self.flush():
                return True
            if attempt + 1 < FINAL_ATTEMPTS:
                await asyncio.sleep(2.0 ** attempt)
        return False

    async def _send(self, payload: list[dict[str, Any]], version: int, records: list[RangeRecord]) -> bool:
        try:
            await self.source.report(payload, version)
            return True
        except Exception as exc:
            self.failures += 1
            log.warning("job %s: report of %d ranges (version %d) failed, kept for the next batch: %r",
                        self.store.job_id, len(records), version, exc)
        async with self.store.lock:
            for rec in records:
                self.store.set_state(rec, rec.before_report, result="", before_report="")
            await self.store.save(*records)
        return False
