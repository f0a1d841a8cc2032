"""Range status back to the source, in batches: every ``batch`` reportable ranges or ``interval_s``
after the first one waits, whichever comes first (a timer woken by changes, not a poll).

Staged outputs go as version 1, one zipFile record per staged file (a range's own output, or a zip
with all the ranges in it), eventStatus ``finished``, with the ``objstoreID`` of the endpoint they
went to; payload failures and failed uploads as version 0 (eventStatus ``failed`` with an
errorCode). A range is saved as ``reported`` before its report goes out and as ``sent`` once the
source holds it (settle.py): a range the source answered ``false``, or reported in a call whose
outcome is unknown, is looked up at the source and only what it does not hold goes again, at most
``SEND_BUDGET`` times; then the range is ``refused`` (counted as not reported, never as done). A
source that cannot be reached keeps the ranges for the next batch, after a pause that grows with
each failed batch (retry.EVENT_REPORTS: from ``interval_s``); once failures have lasted that
policy's budget the reporter stops trying until the job's end, whose last reports are bounded too
(retry.EVENT_FINAL). A restart sends again those never confirmed (PanDA takes a repeated identical
status as a no-op).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nodepilot import retry
from nodepilot.errors import ErrorCode
from services.eventclient.ranges import REPORTABLE, RangeRecord, RangeStore
from services.eventclient.settle import Verdict, answered, range_ids, verdict
from services.eventclient.sources import RangeSource

log = logging.getLogger(__name__)

SEND_BUDGET = 3  # answers without the source taking a range's report, before it is given up


class _NotSettled(Exception):
    def __str__(self) -> str:
        return "the source did not settle every range"


def zip_records(staged: list[RangeRecord], objstore_id: int | None = None) -> list[dict[str, Any]]:
    """Version 1 records (docs/protocol.md "Event ranges"): one per staged file with every range in it."""
    files: dict[str, list[RangeRecord]] = {}
    for rec in staged:
        files.setdefault(rec.zip or rec.id, []).append(rec)
    where = {} if objstore_id is None else {"objstoreID": objstore_id}
    records = []
    for members in files.values():
        file = members[0].file or {}
        records.append({
            "zipFile": {"lfn": members[0].staged_as, "fsize": file.get("fsize"),
                        "adler32": str(file.get("checksum") or "").removeprefix("ad:"),
                        "numEvents": sum(rec.num_events for rec in members), **where},
            "eventRanges": [{"eventRangeID": rec.id, "eventStatus": "finished", **where} for rec in members],
        })
    return records


def failed_record(rec: RangeRecord) -> dict[str, Any]:
    return {"eventRangeID": rec.id, "eventStatus": "failed",
            "errorCode": int(rec.error_code or ErrorCode.ES_RECOVERABLE)}


def unsent(store: RangeStore) -> list[RangeRecord]:
    """Ranges whose report was never confirmed (a crash while sending), back to be reported again."""
    back = [rec for rec in store.in_state("reported") if not rec.sent and not rec.refused]
    for rec in back:
        store.set_state(rec, rec.before_report or "failed", result="", before_report="")
    return back


class Reporter:
    def __init__(self, store: RangeStore, source: RangeSource, batch: int, interval_s: float,
                 objstore_id: int | None = None, shared: bool = False) -> None:
        self.store, self.source = store, source
        self.batch, self.interval_s = max(1, batch), max(0.0, interval_s)
        self.objstore_id = objstore_id
        self.shared = shared  # other eventclients hold ranges of this job (a jumbo job's share)
        self.failures = 0
        self._flushing = asyncio.Lock()  # one flush at a time: the final one waits for a running one

    def pending(self) -> int:
        return self.store.count(*REPORTABLE)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        policy = retry.EVENT_REPORTS.but(first_s=self.interval_s or None)
        failed, budget = 0, retry.Budget(policy)
        while True:
            await self.store.wait_for(lambda: self.pending() > 0)
            deadline = loop.time() + self.interval_s
            await self.store.wait_for(lambda: self.pending() >= self.batch, deadline - loop.time())
            # shielded: stopping the reporter never cuts a report in half; flush_final waits for it
            if await asyncio.shield(self.flush()):
                failed = 0
                continue
            if failed == 0:
                budget = retry.Budget(policy)
            failed += 1
            if budget.left() <= 0:
                log.error("job %s: reports have failed for %.0f s (%d batches): no more until the job's end",
                          self.store.job_id, budget.spent(), failed)
                return
            await asyncio.sleep(min(policy.pause(failed), budget.left()))  # the source is in trouble

    async def flush(self) -> bool:
        """Report every reportable range now; True if the source settled everything."""
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
            ok &= await self._send(zip_records(staged, self.objstore_id), 1, staged)
        if failed:
            ok &= await self._send([failed_record(r) for r in failed], 0, failed)
        return ok

    async def flush_final(self) -> bool:
        """The last reports of a job, then a look at what the source holds of every reported range
        (a report it took but did not apply goes again): bounded by retry.EVENT_FINAL."""

        await self._fail_lost()

        async def attempt(_timeout: float) -> bool:
            if await self.flush() and await self._confirm_all():
                return True
            raise _NotSettled

        try:
            return await retry.call(retry.EVENT_FINAL, attempt, f"job {self.store.job_id}: last reports",
                                    lambda exc: isinstance(exc, _NotSettled))
        except _NotSettled:
            return False

    async def _fail_lost(self) -> None:
        """Ranges the source handed out in an answer that never reached the store (an eventclient
        killed during the call) are failed as recoverable (1224: the server dispatches them again). Not
        for a share of a jumbo job: the job's ranges this eventclient does not hold are the other shares'."""
        lookup = None if self.shared else getattr(self.source, "handed_out", None)
        try:
            held = await lookup() if lookup is not None else None
        except Exception as exc:
            log.warning("job %s: the source cannot say which ranges it handed out: %r", self.store.job_id, exc)
            return
        lost = [rid for rid in held or [] if rid not in self.store.records]
        if lost:
            log.warning("job %s: %d ranges handed out in an answer never received, failed (1224): %s",
                        self.store.job_id, len(lost), ", ".join(lost[:10]))
            await self._send([{"eventRangeID": rid, "eventStatus": "failed",
                               "errorCode": int(ErrorCode.ES_RECOVERABLE)} for rid in lost], 0, [])

    async def _send(self, payload: list[dict[str, Any]], version: int, records: list[RangeRecord]) -> bool:
        ids = range_ids(payload, version)
        try:
            answers = {rid: ok is not False for rid, ok in answered(ids, await self.source.report(payload, version)
                                                                    ).items()}
            reached = True
        except Exception as exc:
            self.failures += 1
            log.warning("job %s: report of %d ranges (version %d) failed, its outcome is looked up: %r",
                        self.store.job_id, len(records), version, exc)
            answers, reached = dict.fromkeys(ids, False), False
        doubtful = [rec for rec in records if not answers.get(rec.id)]
        verdicts = await self._look_up(doubtful, counted=reached) if doubtful else {}
        return await self._settle(records, answers, verdicts)

    async def _look_up(self, records: list[RangeRecord], counted: bool) -> dict[str, Verdict] | None:
        """What the source holds of these ranges; None: it cannot tell now (unreachable). A source that
        cannot look ranges up at all: MISSING for each when it answered (``counted``), else None."""
        try:
            held = await self.source.statuses([rec.id for rec in records])
        except Exception as exc:
            log.warning("job %s: the source's event range statuses are unavailable: %r", self.store.job_id, exc)
            return None
        if held is None:
            return {rec.id: Verdict.MISSING for rec in records} if counted else None
        return {rec.id: verdict(rec.result, held.get(rec.id)) for rec in records}

    async def _settle(self, records: list[RangeRecord], answers: dict[str, bool],
                      verdicts: dict[str, Verdict] | None) -> bool:
        back, refused = [], []
        async with self.store.lock:
            for rec in records:
                outcome = Verdict.HELD if answers.get(rec.id) else (verdicts or {}).get(rec.id)
                if outcome is Verdict.HELD:
                    rec.sent = True
                    continue
                if outcome is not None:  # the source answered without holding it: one of the budget
                    rec.sends += 1
                if outcome is Verdict.REFUSED or rec.sends >= SEND_BUDGET:
                    rec.sent, rec.refused = False, True
                    refused.append(rec)
                else:
                    self.store.set_state(rec, rec.before_report, result="", before_report="")
                    back.append(rec)
            await self.store.save(*records)
        if refused:
            log.warning("job %s: the source did not take the report of %d ranges: %s", self.store.job_id,
                        len(refused), ", ".join(rec.id for rec in refused[:10]))
        return not back

    async def _confirm_all(self) -> bool:
        """Every range reported as taken is looked up once more; False if some went back to be sent."""
        taken = [rec for rec in self.store.in_state("reported") if rec.sent]
        verdicts = await self._look_up(taken, counted=False) if taken else None
        if not verdicts or all(v is Verdict.HELD for v in verdicts.values()):
            return True
        log.warning("job %s: the source does not hold %d reported ranges: reporting them again", self.store.job_id,
                    sum(v is not Verdict.HELD for v in verdicts.values()))
        for rec in taken:
            rec.sent = verdicts[rec.id] is Verdict.HELD
        return await self._settle(taken, {rec.id: rec.sent for rec in taken}, verdicts) and not self.pending()
