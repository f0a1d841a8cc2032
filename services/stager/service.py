"""The stager: moves a job's files between its work dir and storage endpoints.

It serves ``stager:requests`` (contract in docs/bus.md) and answers every request with one
``<kind>_done`` event on the job's event stream. Requests are handled at most once per
``request_id``: the result is kept in ``stager:job:<id>`` (hash, field = request_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import FileSpec
from nodepilot.requests import BadRequest
from nodepilot.service import Service
from services.stager.attempts import FileWork, Moved, Transfer, over_endpoints
from services.stager.catalogue import Catalogues
from services.stager.copysetup import Copysetup, CopysetupError
from services.stager.direct import check_in_place, direct_capable
from services.stager.metrics import StagerMetrics
from services.stager.movers.base import PARTIAL_PREFIX, PARTIAL_SUFFIX, Mover
from services.stager.paths import deterministic_path, log_se_path, order_for_job
from services.stager.request import KINDS, FileResult, Request, failed_files, lfns_of, parse_request
from services.stager.settings import StagerSettings
from services.stager.tarball import make_tarball
from services.stager.traces import Traces

log = logging.getLogger(__name__)

CONSUMER_CONCURRENCY = 8  # requests at once
STATE_TTL_S = 7 * 86400
PARTIAL_GLOB = f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"  # a mover's file being written


class StagerService(Service):
    name = "stager"

    def __init__(self, config: PilotConfig) -> None:
        super().__init__(config)
        self.settings = StagerSettings.from_queue(config.queuedata)
        # one thread per file copy (the pilot-wide bound), a few more for tarballs and abandoned copies
        self.threads = self.settings.transfers_per_pilot + 8
        self.stats = StagerMetrics(self.metrics)
        self.catalogues = Catalogues(config.queuedata, self.redis)  # rucio:// endpoints (services/stager/catalogue.py)
        trace_url = self.settings.trace_url or self.catalogues.trace_url()
        self.traces = Traces(self.redis, trace_url, self.settings.trace_timeout_s,
                             self.settings.trace_retry_cap_s, self.stats, config.node,
                             config.site or config.queuedata.site or config.queue)
        self.traces.on_idle = self.settled
        self.copysetup = Copysetup(self.settings.copysetup, self.settings.copysetup_timeout_s)
        self.slots = asyncio.Semaphore(self.settings.transfers_per_pilot)  # every transfer of this pilot
        self.transfers: set[Transfer] = set()
        self.counts = {"done": 0, "failed": 0, "direct": 0}
        self._running: dict[str, asyncio.Event] = {}
        self._jobs_running: dict[int, int] = {}  # job id -> requests of it in flight

    def workers(self) -> list[Any]:
        return [self._consume(), self.traces.run(), self.catalogues.warm()]

    def busy(self) -> bool:
        """Requests in hand, or traces to send (a stager that retires sends them first)."""
        return super().busy() or self.traces.sending

    async def status(self) -> dict[str, Any]:
        return {"transfers": [t.view() for t in self.transfers], **self.counts,
                "requests_in_flight": len(self._running), "copysetup": self.copysetup.view()}

    async def _consume(self) -> None:
        consumer = bus.Consumer(self.redis, bus.STAGER_REQUESTS, "stager", "stager", self.handle,
                                concurrency=CONSUMER_CONCURRENCY, on_error=self.answer_failure)
        await self.consume_or_stop(consumer)

    # --- one request -------------------------------------------------------------------
    async def answer_failure(self, message: dict[str, Any], exc: BaseException) -> None:
        """A request whose handler raised gets its ``<kind>_done``, every file failed."""
        job_id, kind = bus.job_id_of(message.get("job_id")), message.get("kind")
        if job_id is None or kind not in KINDS:
            return
        diag = self.internal_error(str(kind), exc)
        result = _summary(failed_files(lfns_of(message), diag), time.monotonic(), (ErrorCode.PILOT_EXCEPTION, diag))
        await bus.emit(self.redis, job_id, self.name, f"{kind}_done", request_id=message.get("request_id"), **result)

    async def handle(self, entry_id: str, message: dict[str, Any]) -> None:
        job_id, kind = bus.job_id_of(message.get("job_id")), message.get("kind")
        if job_id is None or kind not in KINDS:
            why = "no valid job_id" if job_id is None else f"unknown kind {kind!r}"
            log.error("stager request %s dropped (%s): %.300r", entry_id, why, message)
            return
        request_id = message.get("request_id")
        request_id = request_id if isinstance(request_id, str) else ""
        key = bus.service_state_key(self.name, job_id)
        if request_id:
            running = self._running.get(request_id)
            if running is not None:  # redelivered while still in progress
                await running.wait()
                return
            self._running[request_id] = asyncio.Event()  # before any await: no second runner
        try:
            if request_id and await self.redis.hexists(key, request_id):
                log.info("request %s of job %s was handled already", request_id, job_id)
                return
            result = {"request_id": message.get("request_id"), **await self._result(kind, job_id, message)}
            await bus.emit(self.redis, job_id, self.name, f"{kind}_done", **result)
            if request_id:
                await self.redis.hset(key, request_id, json.dumps(result))
                await self.redis.expire(key, STATE_TTL_S)
        finally:
            if request_id:
                self._running.pop(request_id).set()

    async def _result(self, kind: str, job_id: int, message: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            request = parse_request(kind, job_id, message)
        except BadRequest as exc:
            diag = clip_diag(f"malformed {kind} request: {exc}")
            log.error("job %s: %s", job_id, diag)
            return _summary(failed_files(lfns_of(message), diag), started, (ErrorCode.PILOT_EXCEPTION, diag))
        self._jobs_running[job_id] = self._jobs_running.get(job_id, 0) + 1
        try:
            files = await self._run(request)
        except Exception as exc:  # a bug here must not leave the monitor waiting
            log.exception("job %s: %s request %s failed", job_id, kind, request.request_id)
            diag = clip_diag(f"stager internal error in {kind}: {exc!r}")
            lfns = [f.lfn for f in request.files]
            return _summary(failed_files(lfns, diag), started, (ErrorCode.PILOT_EXCEPTION, diag))
        finally:
            self._jobs_running[job_id] -= 1
            if not self._jobs_running[job_id]:
                del self._jobs_running[job_id]
        return _summary(files, started)

    async def _run(self, request: Request) -> list[FileResult]:
        self.catalogues.begin(request)  # e.g. Rucio's listing of the inputs, beside the steps below
        if request.kind == "stagein" and self._jobs_running.get(request.job_id) == 1:
            await asyncio.to_thread(_remove_partials, request.workdir)
        try:
            await self.copysetup.ensure()
        except CopysetupError as exc:
            diag = clip_diag(f"copysetup of queue {self.config.queuedata.name} is broken: {exc}")
            log.error("job %s: %s", request.job_id, diag)
            return self._count(failed_files([f.lfn for f in request.files], diag, ErrorCode.SETUP_FAILED))
        work = {"stagein": self._stage_in, "stageout": self._stage_out, "stagelog": self._stage_log}
        handler = work[request.kind]
        limit = asyncio.Semaphore(self.settings.files_per_request)

        async def one(spec: FileSpec) -> FileResult:
            await self.catalogues.ready(request, spec)  # e.g. its line of Rucio's listing: none holds a slot for it
            async with limit:
                started = time.monotonic()
                result = await handler(request, spec)
                result.seconds = round(time.monotonic() - started, 3)
                return self._count([result])[0]

        return list(await asyncio.gather(*(one(spec) for spec in request.files)))

    def _count(self, results: list[FileResult]) -> list[FileResult]:
        for result in results:
            self.counts[result.status if result.status in self.counts else "failed"] += 1
        return results

    def _work(self, request: Request, spec: FileSpec, size: int | None) -> FileWork:
        endpoints = request.endpoints
        if request.direction == "out":
            endpoints = order_for_job(endpoints, spec.ddm_endpoint, self.settings.storage)
        # Harvester push mode: the access point is the storage, the files in it by their names
        relative = spec.lfn if self.config.harvester_dir else deterministic_path(spec.scope, spec.lfn)
        work = FileWork(request, spec, size, endpoints, relative)
        if request.direction == "out":
            work.alternatives, work.why_no_alternatives = self._alternatives_allowed(request)
        return work

    def _alternatives_allowed(self, request: Request) -> tuple[bool, str]:
        """Alternative stage-out: the job's altStageOut decides when it says on/force/off, else the queue."""
        if request.alt_stageout == "off":
            return False, "the job's altStageOut is off"
        if request.alt_stageout in ("on", "force") or self.settings.allow_alt_stageout:
            return True, ""
        return False, "the queue's allow_alt_stageout is off and the job's altStageOut does not ask for it"

    # --- one file ----------------------------------------------------------------------
    async def _stage_in(self, request: Request, spec: FileSpec) -> FileResult:
        dst = request.workdir / spec.lfn
        direct = (request.direct_access and self.settings.direct_access(request.activity)
                  and spec.dispatch_token.lower() != "local")

        async def attempt(mover: Mover, url: str, transfer: Transfer) -> Moved:
            if direct and direct_capable(url):
                return await check_in_place(mover, url, spec)
            fsize, adler = await mover.copy_in(url, dst, spec.checksum, spec.fsize, transfer.progress)
            return Moved(fsize, adler)

        return await self.catalogues.run(self._work(request, spec, spec.fsize),
                                         lambda work: over_endpoints(self, work, attempt))

    async def _stage_out(self, request: Request, spec: FileSpec) -> FileResult:
        src = request.workdir / spec.lfn
        try:
            size = src.stat().st_size if src.is_file() else None
        except OSError:
            size = None
        if size is None:
            return FileResult(spec.lfn, guid=spec.guid, error_code=ErrorCode.MISSING_OUTPUT,
                              diag=clip_diag(f"output file {spec.lfn} is missing from {request.workdir}"))
        return await self.catalogues.run(self._work(request, spec, size),
                                         lambda work: over_endpoints(self, work, _copy_out(src)))

    async def _stage_log(self, request: Request, spec: FileSpec) -> FileResult:
        tarball = request.workdir / spec.lfn
        try:
            size = await asyncio.to_thread(make_tarball, request.workdir, tarball, request.tarball_dir,
                                           request.exclude)
        except Exception as exc:
            log.warning("job %s: log tarball failed: %r", request.job_id, exc)
            return FileResult(spec.lfn, guid=spec.guid, error_code=ErrorCode.LOG_CREATION_FAILED,
                              diag=clip_diag(f"cannot create the log tarball {tarball}: {exc}"))
        result = await self._stage_out(request, spec)
        if self.settings.log_se:
            await self._to_log_se(request, spec, size, result)
        return result

    async def _to_log_se(self, request: Request, spec: FileSpec, size: int, result: FileResult) -> None:
        """A second copy of the log on the log SE, under the job-id pair path; its failure is only noted."""
        work = FileWork(request, spec, size, list(self.settings.log_se), log_se_path(request.job_id, spec.lfn))
        copy = await over_endpoints(self, work, _copy_out(request.workdir / spec.lfn))
        if copy.status == "done":
            result.log_se_surl = copy.surl
            note = f"also stored on log SE {copy.endpoint}"
        else:
            note = f"log SE copy failed (not fatal): {copy.diag}"
            log.warning("job %s: %s", request.job_id, note)
        result.diag = clip_diag(f"{result.diag}; {note}" if result.diag else note)


def _copy_out(src: Path) -> Any:
    async def attempt(mover: Mover, url: str, transfer: Transfer) -> Moved:
        fsize, adler = await mover.copy_out(src, url, transfer.progress)
        return Moved(fsize, adler)

    return attempt


def _remove_partials(workdir: Path) -> None:
    """Files a killed stager was writing (never at a final name): nobody will finish them."""
    with contextlib.suppress(OSError):
        for path in workdir.glob(PARTIAL_GLOB):
            log.info("removing %s, left by an interrupted transfer", path)
            path.unlink(missing_ok=True)


def _summary(files: list[FileResult], started: float,
             failure: tuple[int, str] | None = None) -> dict[str, Any]:
    first = next((f for f in files if f.status not in ("done", "direct")), None)
    code, diag = failure or ((first.error_code, first.diag) if first else (0, ""))
    return {"ok": failure is None and first is None, "error_code": int(code), "diag": diag,
            "seconds": round(time.monotonic() - started, 3), "files": [asdict(f) for f in files]}
