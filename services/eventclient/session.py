"""One event-service job at the eventclient: ranges from the source to the payload (through both
front-ends: the HTTP API and the line protocol call the same methods here), each output to the
stager as soon as the payload gives it, statuses back to the source, and the end of it all.

Everything the session knows is in Redis (``ranges.py``): a session opened again after a crash
carries on where the last one stopped, without fetching the ranges it holds a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import retry
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import JobDefinitionError, check_lfn
from services.eventclient.api import SOCKET_NAME, PayloadApp, PayloadServer
from services.eventclient.contract import StartRequest, summary
from services.eventclient.fetcher import Fetcher
from services.eventclient.lines import LineServer
from services.eventclient.payload import DoneBody, FailedBody, Refused
from services.eventclient.ranges import HELD, REPORTABLE, STATES, RangeRecord, RangeStore
from services.eventclient.reporter import Reporter, unsent
from services.eventclient.sources import RangeSource, make_source
from services.eventclient.stageout import Stageout
from services.eventclient.uploads import Uploads

log = logging.getLogger(__name__)

TASK_STOP_S = 1.0


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


class JobSession:
    def __init__(self, r: aioredis.Redis, config: PilotConfig, start: StartRequest) -> None:
        self.r, self.config, self.start = r, config, start
        self.job_id = start.job_id
        self.store = RangeStore(r, start.job_id)
        self.socket_path = start.workdir / SOCKET_NAME
        self.stageout = Stageout(r, start.job_id, start.workdir, start.endpoints, start.scope_out)
        self.uploads = Uploads(self.store, self.stageout, start.workdir, start.zip_outputs, start.zip_seconds,
                               lambda: self.closing, self._on_stageout)
        self.source: RangeSource | None = None
        self.reporter: Reporter | None = None
        self.server: PayloadServer | None = None
        self.lines = LineServer(self, start.workdir)
        self.fetcher = Fetcher(self.store, start.batch, lambda: self.softkilled or self.closing)
        self.softkilled = False
        self.closing = False  # finishing: no range is handed out any more
        self.started = time.time()
        self._position = "0-0"  # of our reader in the job's event stream
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = asyncio.Event()
        self._open_failure: dict[str, Any] | None = None
        self._finish: asyncio.Task[dict[str, Any]] | None = None
        self.result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    # --- open ------------------------------------------------------------------------------
    async def previous_summary(self) -> dict[str, Any] | None:
        """The summary of this very start request if it was finished already; a summary of an
        earlier start for the same job id is forgotten with the rest of that run."""
        meta = await self.store.get_meta()
        if "summary" not in meta:
            return None
        if json.loads(meta.get("start") or "{}").get("request_id") == self.start.request_id:
            return json.loads(meta["summary"])
        await self.store.reset()
        return None

    async def open(self) -> bool:
        """Rebuild the state, open the payload API; False (and a final summary) if it cannot be done."""
        try:
            await self._open()
        except Exception as exc:
            log.exception("job %s: the event service cannot start", self.job_id)
            await self._close_parts()
            self._open_failure = summary(error_code=ErrorCode.ES_FATAL, diag=f"eventclient cannot start: {exc}")
            await self.store.set_meta(summary=json.dumps(self._open_failure))
            self._set_result(self._open_failure)
            return False
        finally:
            self._opened.set()
        return True

    @property
    def env(self) -> dict[str, str]:
        """The payload's environment for both front-ends."""
        return {"NODEPILOT_EVENTS_SOCKET": str(self.socket_path), **self.lines.env}

    async def _open(self) -> None:
        s = self.start
        await self.store.load()
        async with self.store.lock:
            await self.store.save(*unsent(self.store))  # reports a crash left unconfirmed: again
        self.uploads.load()
        if self.store.records:  # after a crash: files it left between an answer and their removal
            await asyncio.to_thread(self._remove_files, [rec for rec in self.store.records.values()
                                                         if rec.state not in ("ready", "running", "done")])
        meta = await self.store.get_meta()
        self.fetcher.exhausted, self.softkilled = meta.get("exhausted") == "1", meta.get("softkill") == "1"
        self.started = float(meta.get("started") or time.time())
        self._position = meta.get("events_last") or await self.stageout.position()
        await self.store.set_meta(start=meta.get("start") or json.dumps(s.to_message()),
                                  started=str(self.started), events_last=self._position)
        s.workdir.mkdir(parents=True, exist_ok=True)
        if s.objstore_id is None and not s.ranges_file:
            raise ValueError("no objstoreID for the event range reports (the PanDA server refuses them without): "
                             "the queue's es_events endpoint has no id and es.objstore_id is not set")
        self.source = make_source(self.config, s.job_id, s.jobset_id, s.task_id, s.ranges_file, s.report_file,
                                  s.workdir)
        self.fetcher.source = self.source
        self.reporter = Reporter(self.store, self.source, s.report_batch, s.report_interval_s, s.objstore_id,
                                 shared=s.shared)
        reporter = self.reporter
        self._tasks = [
            asyncio.create_task(self._keep_running("the stager's answers", lambda: self.stageout.follow(
                self._position, self._on_answers), retry.EVENT_UPLOAD)),
            asyncio.create_task(self._keep_running("the uploads", self.uploads.run, retry.EVENT_UPLOAD)),
            asyncio.create_task(self._keep_running("the reporter", reporter.run, retry.EVENT_REPORTS)),
        ]
        self.server = PayloadServer(PayloadApp(self), self.socket_path)
        await self.server.open()
        await self.lines.open()
        log.info("job %s: payload API on %s and %s/%s (%d ranges held from before)", self.job_id, self.socket_path,
                 self.lines.out_path.name, self.lines.in_path.name, len(self.store.records))

    # --- the payload's API -----------------------------------------------------------------
    async def take(self, n: int, request: str = "") -> list[dict[str, Any]]:
        if not self.store.fetched(request):  # (a fetch asked again needs nothing from the source)
            await self.fetcher.ensure(n, strict=True)
        async with self.store.lock:
            records = self._hand_out(n, request)
            await self.store.save(*records)
        self.fetcher.handed(len(records))
        return [rec.range for rec in records]

    def _hand_out(self, n: int, request: str = "") -> list[RangeRecord]:
        """Up to ``n`` ready ranges, now running, saved with ``request`` (with the lock held; to be
        saved); a request id given before gets the ranges it got then, those still running."""
        if not n:
            return []
        if again := self.store.fetched(request):
            return again
        if self.softkilled or self.closing:
            return []
        records = self.store.first("ready", n)
        for rec in records:
            self.store.set_state(rec, "running", fetch=request)
        return records

    async def done(self, range_id: str, body: DoneBody) -> dict[str, Any]:
        """The range's output given; with ``next``, the next ranges handed out in the same call (and
        saved with it in one round trip)."""
        try:
            output = check_lfn(body.output)
        except JobDefinitionError as exc:
            raise Refused(400, exc.diag) from None
        await self.fetcher.ensure(body.next, strict=False)
        async with self.store.lock:
            rec = self._record(range_id)
            changed = []
            if rec.state == "running":
                other = self.store.by_output(output)
                if other is not None:
                    raise Refused(409, f"output {output} is already the output of range {other.id}")
                if not _regular_file(self.start.workdir / output):  # a symlink could point anywhere
                    raise Refused(400, f"output {output} is not a regular file in {self.start.workdir}")
                self.store.set_state(rec, "done", output=output, guid=str(uuid.uuid4()), cpu_s=body.cpu_s,
                                     wall_s=body.wall_s, n_events=body.n_events)
                self.uploads.add(rec)
                changed.append(rec)
            elif rec.output != output or rec.state not in ("done", "staged", "stage_failed", "reported"):
                raise Refused(409, f"range {range_id} is {rec.state}, not running")
            # (else: said twice, already known)
            taken = self._hand_out(body.next, body.request)
            await self.store.save(*changed, *taken)
        answer: dict[str, Any] = {"range": rec.id, "state": rec.state}
        if body.next:
            self.fetcher.handed(len(taken))
            answer["ranges"] = [r.range for r in taken]
        return answer

    async def fail(self, range_id: str, body: FailedBody) -> dict[str, Any]:
        async with self.store.lock:
            rec = self._record(range_id)
            if rec.state != "running":
                raise Refused(409, f"range {range_id} is {rec.state}, not running")
            self.store.set_state(rec, "failed", error_code=int(body.error_code or ErrorCode.ES_RECOVERABLE),
                                 diag=clip_diag(body.diag or "the payload failed this range"))
            await self.store.save(rec)
        return {"range": rec.id, "state": rec.state}

    async def softkill(self) -> dict[str, Any]:
        if not self.softkilled:
            self.softkilled = True
            await self.store.set_meta(softkill="1")
            self.store.notify()
            log.info("job %s: softkill: no more ranges handed out", self.job_id)
        return {"softkill": True, "running": self.store.count("running")}

    def states(self) -> dict[str, Any]:
        return {"counts": self.counts(), "softkill": self.softkilled, "closing": self.closing,
                "exhausted": self.fetcher.exhausted,
                "ranges": {rec.id: f"reported_{rec.result}" if rec.result else rec.state
                           for rec in self.store.in_state(*STATES)}}

    def _record(self, range_id: str) -> RangeRecord:
        rec = self.store.records.get(range_id)
        if rec is None:
            raise Refused(404, f"no range {range_id} in this job")
        return rec

    # --- the stager's answers ----------------------------------------------------------------
    async def _on_answers(self, answers: list[tuple[str, dict[str, Any]]], position: str = "") -> None:
        """The stager's answers read at once: saved with our new position (if read from the job's
        events) in one round trip."""
        async with self.store.lock:
            members = [rec for key, event in answers for rec in self._answered(key, event)]
            self._remove_files(members)  # (first: a crash before the save reads the answers again)
            await self.store.save(*members, meta={"events_last": position} if position else None)
            if position:
                self._position = position

    async def _on_stageout(self, key: str, event: dict[str, Any]) -> None:
        """One answer (an upload that failed before it reached the stager)."""
        await self._on_answers([(key, event)])

    def _answered(self, key: str, event: dict[str, Any]) -> list[RangeRecord]:
        """The ranges of an upload, each staged or not as its file went (with the lock held)."""
        reports = {f.get("lfn"): f for f in event.get("files") or [] if isinstance(f, dict)}
        members = [rec for rec in self.uploads.answered(key) if rec.state == "done"]
        for rec in members:  # (a range sealed meanwhile is not "done" any more)
            file = reports.get(rec.staged_as) or {}
            if file.get("status") == "done":
                self.store.set_state(rec, "staged", file=file)
                continue
            code = file.get("error_code") or event.get("error_code") or ErrorCode.STAGEOUT_FAILED
            diag = file.get("diag") or event.get("diag") or "stage-out failed"
            self.store.set_state(rec, "stage_failed", file=file or None, error_code=int(code), diag=clip_diag(diag))
        return members

    def _remove_files(self, answered: list[RangeRecord]) -> None:
        """The work dir's copies of what was staged, and zips (staged or not: their members are here)."""
        gone = {rec.zip for rec in answered if rec.zip}
        gone |= {rec.output for rec in answered if rec.state == "staged" or rec.result == "finished"}
        for name in gone - {""}:
            with contextlib.suppress(FileNotFoundError):
                (self.start.workdir / name).unlink()

    async def _keep_running(self, what: str, run: Callable[[], Awaitable[None]], policy: retry.Policy) -> None:
        """A worker of the session that outlives its failures (Redis away a moment, a source's bug),
        restarted with growing pauses and given up after the policy's budget (the job's end still
        reports and uploads what is left, bounded: Reporter.flush_final)."""
        await retry.keep_running(policy, run, f"job {self.job_id}: {what}")

    # --- the end ----------------------------------------------------------------------------
    async def finish(self, reason: str) -> dict[str, Any]:
        """End the job once (later calls get the same summary): see README.md, "The end of a job"."""
        await self._opened.wait()
        if self._open_failure is not None:
            return self._open_failure
        if self._finish is None:
            self._finish = asyncio.create_task(self._finish_job(reason))
        return await asyncio.shield(self._finish)

    async def _finish_job(self, reason: str) -> dict[str, Any]:
        try:
            result = await self._end(reason)
        except Exception as exc:  # a bug or Redis gone: the monitor still gets its answer
            log.exception("job %s: the event service did not end cleanly", self.job_id)
            result = summary(len(self.store.records), error_code=ErrorCode.ES_FATAL,
                             diag=f"eventclient failed while ending the job: {exc!r}")
        await self._close_parts()
        self._set_result(result)
        return result

    async def _end(self, reason: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start.finish_timeout_s
        log.info("job %s: finishing the event service (%s)", self.job_id, reason)
        if reason == "softkill":
            await self.softkill()
            await self.store.wait_for(lambda: self.store.count("running") == 0, deadline - loop.time())
        self.closing = True
        self.store.notify()  # the uploads still waiting go now
        if not await self.store.wait_for(lambda: self.store.count("done") == 0, deadline - loop.time()):
            log.warning("job %s: %d uploads unanswered after %.0f s", self.job_id, self.store.count("done"),
                        self.start.finish_timeout_s)
        await self._stop_tasks()
        await self._seal(reason)
        assert self.reporter is not None
        reported = await self.reporter.flush_final()
        result = self._summary(reported)
        await self.store.set_meta(summary=json.dumps(result))
        log.info("job %s: event service done: %s (%d outputs in %d stageout requests)", self.job_id, result["diag"],
                 self.uploads.outputs, self.uploads.requests)
        return result

    async def _seal(self, reason: str) -> None:
        """Every range not processed fails (1224) and every unanswered upload (1152): none dangles."""
        async with self.store.lock:
            held = self.store.in_state(*HELD)
            for rec in held:
                self.store.set_state(rec, "failed", error_code=ErrorCode.ES_RECOVERABLE, unprocessed=True,
                                     diag=clip_diag(f"not processed before the end of the job ({reason})"))
            stuck = self.store.in_state("done")
            for rec in stuck:
                self.store.set_state(rec, "stage_failed", error_code=ErrorCode.STAGEOUT_TIMEOUT,
                                     diag=f"stage-out not answered within {self.start.finish_timeout_s:.0f} s")
            await self.store.save(*held, *stuck)

    def _summary(self, reported: bool) -> dict[str, Any]:
        """Only what the source took counts: a finished range whose report it did not take is not done."""
        records = self.store.in_state(*STATES)
        finished = [r for r in records if r.result == "finished" and r.sent]
        done_here = [r for r in records if r.state == "staged" or r.result == "finished"]
        not_taken = [r for r in records if r.state in REPORTABLE or (r.state == "reported" and not r.sent)]
        n_failed = len(records) - len(finished)
        processed = sum(1 for r in records if not r.unprocessed)
        if processed == 0:
            code, diag = ErrorCode.ES_NO_EVENTS, f"no event range was processed ({len(records)} received)"
        elif not finished and done_here:
            code, diag = ErrorCode.ES_FATAL, f"the server took none of the {len(done_here)} finished event ranges"
        elif not finished:
            code, diag = ErrorCode.ES_FATAL, f"all {len(records)} event ranges failed"
        else:
            code, diag = 0, f"{len(records)} event ranges: {len(finished)} finished, {n_failed} failed"
        if not_taken:
            diag += f"; the server did not take the report of {len(not_taken)} ranges"
            if not reported:
                diag += " (it could not be reached)"
        files = {r.staged_as: r.file for r in finished if r.file}  # a zip once
        return summary(len(records), len(finished), n_failed, sum(r.num_events for r in finished), code, diag,
                       list(files.values()), len(not_taken))

    async def _stop_tasks(self) -> None:
        ahead = self.fetcher.stop()
        tasks = [*self._tasks, *([ahead] if ahead is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_STOP_S)
        self._tasks = []

    async def _close_parts(self) -> None:
        await self._stop_tasks()
        await self.lines.close()
        if self.server is not None:
            await self.server.close()
        if self.source is not None:
            with contextlib.suppress(Exception):
                await self.source.aclose()

    def _set_result(self, result: dict[str, Any]) -> None:
        if not self.result.done():
            self.result.set_result(result)

    # --- status -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Ranges by state; the reported ones also by what was reported."""
        counts = self.store.counts
        counts |= {"reported_finished": 0, "reported_failed": 0}
        for rec in self.store.records.values():
            if rec.result:
                counts[f"reported_{rec.result}"] += 1
        return counts

    def status(self) -> dict[str, Any]:
        elapsed = max(time.time() - self.started, 1e-6)
        processed = len(self.store.records) - self.store.count(*HELD)
        return {"request_id": self.start.request_id, "socket": str(self.socket_path), "counts": self.counts(),
                "ranges_per_s": round(processed / elapsed, 3), "softkill": self.softkilled,
                "uploads": {"requests": self.uploads.requests, "outputs": self.uploads.outputs},
                "closing": self.closing, "exhausted": self.fetcher.exhausted}
