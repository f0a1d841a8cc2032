"""Range status back to the source, in batches: every ``batch`` reportable ranges or ``interval_s``
after the first one waits, whichever comes first (a timer woken by changes, not a poll).

Staged outputs go as version 1, one zipFile record per staged file (a range's own output, or a zip
with all the ranges in it), eventStatus ``finished``; payload failures and failed uploads as
version 0 (eventStatus ``failed`` with an errorCode). A range is saved as ``reported`` (not yet
``sent``) before its report goes out and as ``sent`` once the source took it: a failed send puts
the ranges back for the next batch, and a restart sends again those never confirmed (at least
once: a crash within the few milliseconds between the source taking a report and our saving that
it did sends that report twice; PanDA takes a repeated identical status as a no-op).
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


def zip_records(staged: list[RangeRecord]) -> list[dict[str, Any]]:
    """Version 1 records (docs/protocol.md section 4): one per staged file with every range in it."""
    files: dict[str, list[RangeRecord]] = {}
    for rec in staged:
        files.setdefault(rec.zip or rec.id, []).append(rec)
    records = []
    for members in files.values():
        file = members[0].file or {}
        records.append({
            "zipFile": {"lfn": members[0].staged_as, "fsize": file.get("fsize"),
                        "adler32": str(file.get("checksum") or "").removeprefix("ad:"),
                        "numEvents": sum(rec.num_events for rec in members)},
            "eventRanges": [{"eventRangeID": rec.id, "eventStatus": "finished"} for rec in members],
        })
    return records


def failed_record(rec: RangeRecord) -> dict[str, Any]:
    return {"eventRangeID": rec.id, "eventStatus": "failed",
            "errorCode": int(rec.error_code or ErrorCode.ES_RECOVERABLE)}


def unsent(store: RangeStore) -> list[RangeRecord]:
    """Ranges whose report was never confirmed (a crash while sending), back to be reported again."""
    back = [rec for rec in store.in_state("reported") if not rec.sent]
    for rec in back:
        store.set_state(rec, rec.before_report or "failed", result="", before_report="")
    return back


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
            ok &= await self._send(zip_records(staged), 1, staged)
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
        except Exception as exc:
            self.failures += 1
            log.warning("job %s: report of %d ranges (version %d) failed, kept for the next batch: %r",
                        self.store.job_id, len(records), version, exc)
            async with self.store.lock:
                for rec in records:
                    self.store.set_state(rec, rec.before_report, result="", before_report="")
                await self.store.save(*records)
            return False
        async with self.store.lock:
            for rec in records:
                rec.sent = True
            await self.store.save(*records)
        return True
