"""One event-service job at the eventclient: ranges from the source to the payload, each output to
the stager as soon as the payload gives it, statuses back to the source, and the end of it all.

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

from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import JobDefinitionError, check_lfn
from services.eventclient.api import SOCKET_NAME, DoneBody, FailedBody, PayloadServer, Refused, build_app
from services.eventclient.contract import StartRequest, summary
from services.eventclient.ranges import HELD, REPORTABLE, STATES, RangeRecord, RangeStore
from services.eventclient.reporter import Reporter
from services.eventclient.sources import RangeSource, make_source
from services.eventclient.stageout import Stageout

log = logging.getLogger(__name__)

TASK_STOP_S = 1.0
RESTART_S = 2.0


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
        self.source: RangeSource | None = None
        self.reporter: Reporter | None = None
        self.server: PayloadServer | None = None
        self.exhausted = False
        self.softkilled = False
        self.closing = False  # finishing: no range is handed out any more
        self.started = time.time()
        self._fetching = asyncio.Lock()
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

    async def _open(self) -> None:
        s = self.start
        await self.store.load()
        meta = await self.store.get_meta()
        self.exhausted, self.softkilled = meta.get("exhausted") == "1", meta.get("softkill") == "1"
        self.started = float(meta.get("started") or time.time())
        self._position = meta.get("events_last") or await self.stageout.position()
        await self.store.set_meta(start=meta.get("start") or json.dumps(s.to_message()),
                                  started=str(self.started), events_last=self._position)
        s.workdir.mkdir(parents=True, exist_ok=True)
        self.source = make_source(self.config, s.job_id, s.jobset_id, s.task_id, s.ranges_file, s.report_file,
                                  s.workdir)
        self.reporter = Reporter(self.store, self.source, s.report_batch, s.report_interval_s)
        for rec in self.store.in_state("done"):  # the request may not have gone out before a crash
            await self.stageout.request(rec)
        reporter = self.reporter
        self._tasks = [
            asyncio.create_task(self._keep_running("the stager's answers", lambda: self.stageout.follow(
                self._position, self._on_stageout, self._save_position))),
            asyncio.create_task(self._keep_running("the reporter", reporter.run)),
        ]
        self.server = PayloadServer(build_app(self), self.socket_path)
        await self.server.open()
        log.info("job %s: payload API on %s (%d ranges held from before)", self.job_id, self.socket_path,
                 len(self.store.records))

    # --- the payload's API -----------------------------------------------------------------
    async def take(self, n: int) -> list[dict[str, Any]]:
        if self.softkilled or self.closing:
            return []
        async with self._fetching:
            await self._fill(n)
        async with self.store.lock:
            if self.softkilled or self.closing:
                return []
            records = self.store.in_state("ready")[:n]
            for rec in records:
                self.store.set_state(rec, "running")
            await self.store.save(*records)
        return [rec.range for rec in records]

    async def _fill(self, n: int) -> None:
        """Fetch batches from the source until ``n`` ranges are ready or the source has no more."""
        assert self.source is not None
        repeats = 0
        while self.store.count("ready") < n and not self.exhausted and not self.closing:
            try:
                got = await self.source.acquire(self.start.batch)
            except Exception as exc:
                log.warning("job %s: no event ranges from the source: %r", self.job_id, exc)
                if self.store.count("ready"):
                    return
                raise Refused(503, f"the range source failed, ask again later: {exc}") from exc
            async with self.store.lock:
                new = self.store.add(got)
                await self.store.save(*new)
            repeats = 0 if new else repeats + 1
            # a source that only repeats ranges we hold (a file source after a restart) is drained
            if not got or repeats > len(self.store.records) // self.start.batch + 1:
                self.exhausted = True
                await self.store.set_meta(exhausted="1")

    async def done(self, range_id: str, body: DoneBody) -> dict[str, Any]:
        try:
            output = check_lfn(body.output)
        except JobDefinitionError as exc:
            raise Refused(400, exc.diag) from None
        async with self.store.lock:
            rec = self._record(range_id)
            if rec.state != "running":
                if rec.output == output and rec.state in ("done", "staged", "stage_failed", "reported"):
                    return {"range": rec.id, "state": rec.state}  # said twice: already known
                raise Refused(409, f"range {range_id} is {rec.state}, not running")
            other = self.store.by_output(output)
            if other is not None:
                raise Refused(409, f"output {output} is already the output of range {other.id}")
            if not _regular_file(self.start.workdir / output):  # a symlink could point anywhere
                raise Refused(400, f"output {output} is not a regular file in {self.start.workdir}")
            self.store.set_state(rec, "done", output=output, guid=str(uuid.uuid4()), cpu_s=body.cpu_s,
                                 wall_s=body.wall_s, n_events=body.n_events)
            await self.store.save(rec)
        await self.stageout.request(rec)
        return {"range": rec.id, "state": rec.state}

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
                "exhausted": self.exhausted,
                "ranges": {rec.id: f"reported_{rec.result}" if rec.result else rec.state
                           for rec in self.store.in_state(*STATES)}}

    def _record(self, range_id: str) -> RangeRecord:
        rec = self.store.records.get(range_id)
        if rec is None:
            raise Refused(404, f"no range {range_id} in this job")
        return rec

    # --- the stager's answers ----------------------------------------------------------------
    async def _on_stageout(self, range_id: str, event: dict[str, Any]) -> None:
        async with self.store.lock:
            rec = self.store.records.get(range_id)
            if rec is None or rec.state != "done":
                return  # an answer seen before a restart, or to an upload given up on
            files = event.get("files") or [{}]
            file = files[0] if isinstance(files[0], dict) else {}
            if event.get("ok") and file.get("status") == "done":
                self.store.set_state(rec, "staged", file=file)
            else:
                code = file.get("error_code") or event.get("error_code") or ErrorCode.STAGEOUT_FAILED
                self.store.set_state(rec, "stage_failed", file=file, error_code=int(code),
                                     diag=clip_diag(file.get("diag") or event.get("diag") or "stage-out failed"))
            await self.store.save(rec)
        if rec.state == "staged":
            with contextlib.suppress(FileNotFoundError):
                (self.start.workdir / rec.output).unlink()

    async def _save_position(self, entry_id: str) -> None:
        await self.store.set_meta(events_last=entry_id)
        self._position = entry_id

    async def _keep_running(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """A worker of the session that outlives its failures (Redis away a moment, a source's bug)."""
        while True:
            try:
                await run()
            except Exception:
                log.exception("job %s: %s failed: again in %.0f s", self.job_id, what, RESTART_S)
                await asyncio.sleep(RESTART_S)

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
        if not await self.store.wait_for(lambda: self.store.count("done") == 0, deadline - loop.time()):
            log.warning("job %s: %d uploads unanswered after %.0f s", self.job_id, self.store.count("done"),
                        self.start.finish_timeout_s)
        await self._seal(reason)
        await self._stop_tasks()
        assert self.reporter is not None
        reported = await self.reporter.flush_final()
        result = self._summary(reported)
        await self.store.set_meta(summary=json.dumps(result))
        log.info("job %s: event service done: %s", self.job_id, result["diag"])
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
        records = self.store.in_state(*STATES)
        finished = [r for r in records if r.result == "finished" or (not reported and r.state == "staged")]
        n_failed = len(records) - len(finished)
        processed = sum(1 for r in records if not r.unprocessed)
        unreported = self.store.count(*REPORTABLE)
        if processed == 0:
            code, diag = ErrorCode.ES_NO_EVENTS, f"no event range was processed ({len(records)} received)"
        elif not finished:
            code, diag = ErrorCode.ES_FATAL, f"all {len(records)} event ranges failed"
        else:
            code, diag = 0, f"{len(records)} event ranges: {len(finished)} finished, {n_failed} failed"
        if unreported:
            diag += f"; {unreported} ranges could not be reported to the source"
        return summary(len(records), len(finished), n_failed, sum(r.num_events for r in finished), code, diag,
                       [r.file for r in finished if r.file], unreported)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TASK_STOP_S)
        self._tasks = []

    async def _close_parts(self) -> None:
        await self._stop_tasks()
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
        counts = {state: self.store.counts[state] for state in STATES}
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
                "closing": self.closing, "exhausted": self.exhausted}
