"""The stager: moves a job's files between its work dir and storage endpoints.

It serves ``stager:requests`` (contract in docs/bus.md) and answers every request with one
``<kind>_done`` event on the job's event stream. Requests are handled at most once per
``request_id``: the result is kept in ``stager:job:<id>`` (hash, field = request_id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodepilot import bus
from nodepilot.config import Endpoint, PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import FileSpec, JobDefinitionError, check_lfn, parse_checksum
from nodepilot.requests import BadRequest, endpoints_of, request_id_of, workdir_of
from nodepilot.service import Service
from services.stager.movers.base import Reason, TransferError, mover_for
from services.stager.paths import deterministic_path, join_url
from services.stager.tarball import make_tarball

log = logging.getLogger(__name__)

KINDS = ("stagein", "stageout", "stagelog")
PARALLEL_FILES = 4  # per request
CONSUMER_CONCURRENCY = 8  # requests at once
STATE_TTL_S = 7 * 86400

IN_CODES = {
    Reason.MISSING: ErrorCode.STAGEIN_FAILED, Reason.SIZE: ErrorCode.STAGEIN_FAILED,
    Reason.ADLER32: ErrorCode.ADLER32_MISMATCH_IN, Reason.MD5: ErrorCode.MD5_MISMATCH_IN,
    Reason.TIMEOUT: ErrorCode.STAGEIN_TIMEOUT, Reason.NOSPACE: ErrorCode.DISK_SPACE,
    Reason.IO: ErrorCode.STAGEIN_FAILED, Reason.PROTOCOL: ErrorCode.NO_STORAGE_PROTOCOL,
}
OUT_CODES = {
    Reason.MISSING: ErrorCode.MISSING_OUTPUT, Reason.SIZE: ErrorCode.STAGEOUT_FAILED,
    Reason.ADLER32: ErrorCode.ADLER32_MISMATCH_OUT, Reason.MD5: ErrorCode.MD5_MISMATCH_OUT,
    Reason.TIMEOUT: ErrorCode.STAGEOUT_TIMEOUT, Reason.NOSPACE: ErrorCode.STAGEOUT_FAILED,
    Reason.IO: ErrorCode.STAGEOUT_FAILED, Reason.PROTOCOL: ErrorCode.NO_STORAGE_PROTOCOL,
}
# failures on the worker node's side: another endpoint would not help
LOCAL_REASONS = {"in": {Reason.NOSPACE}, "out": {Reason.MISSING}}


@dataclass
class Request:
    kind: str
    job_id: int
    request_id: str
    workdir: Path
    endpoints: list[Endpoint]
    files: list[FileSpec]
    tarball_dir: str = ""
    exclude: list[str] = field(default_factory=list)


@dataclass
class FileResult:
    lfn: str
    status: str = "failed"
    error_code: int = 0
    diag: str = ""
    fsize: int | None = None
    checksum: str = ""
    guid: str = ""
    surl: str = ""
    endpoint: str = ""
    seconds: float = 0.0


@dataclass(eq=False)
class Transfer:
    """One file in flight, as /status shows it."""

    job_id: int
    lfn: str
    direction: str  # in | out
    size: int | None
    bytes_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int) -> None:
        self.bytes_done = done

    def view(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {"job_id": self.job_id, "lfn": self.lfn, "direction": self.direction,
                "bytes_done": self.bytes_done, "size": self.size,
                "rate_bytes_s": round(self.bytes_done / elapsed, 1)}


Attempt = Callable[[str, Transfer], Awaitable[tuple[int, str]]]


class StagerService(Service):
    name = "stager"

    def __init__(self, config: PilotConfig) -> None:
        super().__init__(config)
        self.transfers: set[Transfer] = set()
        self.counts = {"done": 0, "failed": 0}
        self._running: dict[str, asyncio.Event] = {}

    def workers(self) -> list[Any]:
        return [self._consume()]

    async def status(self) -> dict[str, Any]:
        return {"transfers": [t.view() for t in self.transfers], **self.counts,
                "requests_in_flight": len(self._running)}

    async def _consume(self) -> None:
        # one thread per file copy: the default pool (cpus + 4) would queue copies behind each other
        workers = CONSUMER_CONCURRENCY * PARALLEL_FILES + 8
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, "stager"))
        consumer = bus.Consumer(self.redis, bus.STAGER_REQUESTS, "stager", "stager", self.handle,
                                concurrency=CONSUMER_CONCURRENCY)
        await self.consume_or_stop(consumer)

    # --- one request -------------------------------------------------------------------
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
            return _summary(_failed(_lfns(message), diag), started, (ErrorCode.PILOT_EXCEPTION, diag))
        try:
            files = await self._run(request)
        except Exception as exc:  # a bug here must not leave the monitor waiting
            log.exception("job %s: %s request %s failed", job_id, kind, request.request_id)
            diag = clip_diag(f"stager internal error in {kind}: {exc!r}")
            lfns = [f.lfn for f in request.files]
            return _summary(_failed(lfns, diag), started, (ErrorCode.PILOT_EXCEPTION, diag))
        return _summary(files, started)

    async def _run(self, request: Request) -> list[FileResult]:
        work = {"stagein": self._stage_in, "stageout": self._stage_out, "stagelog": self._stage_log}
        handler = work[request.kind]
        limit = asyncio.Semaphore(PARALLEL_FILES)

        async def one(spec: FileSpec) -> FileResult:
            async with limit:
                started = time.monotonic()
                result = await handler(request, spec)
                result.seconds = round(time.monotonic() - started, 3)
                self.counts["done" if result.status == "done" else "failed"] += 1
                return result

        return list(await asyncio.gather(*(one(spec) for spec in request.files)))

    # --- one file ----------------------------------------------------------------------
    async def _stage_in(self, request: Request, spec: FileSpec) -> FileResult:
        dst = request.workdir / spec.lfn

        async def attempt(url: str, transfer: Transfer) -> tuple[int, str]:
            return await mover_for(url).copy_in(url, dst, spec.checksum, spec.fsize, transfer.progress)

        return await self._attempts(request, spec, "in", spec.fsize, attempt)

    async def _stage_out(self, request: Request, spec: FileSpec) -> FileResult:
        src = request.workdir / spec.lfn
        try:
            size = src.stat().st_size if src.is_file() else None
        except OSError:
            size = None
        if size is None:
            return FileResult(spec.lfn, guid=spec.guid, error_code=ErrorCode.MISSING_OUTPUT,
                              diag=clip_diag(f"output file {spec.lfn} is missing from {request.workdir}"))

        async def attempt(url: str, transfer: Transfer) -> tuple[int, str]:
            return await mover_for(url).copy_out(src, url, transfer.progress)

        return await self._attempts(request, spec, "out", size, attempt)

    async def _stage_log(self, request: Request, spec: FileSpec) -> FileResult:
        tarball = request.workdir / spec.lfn
        try:
            await asyncio.to_thread(make_tarball, request.workdir, tarball, request.tarball_dir, request.exclude)
        except Exception as exc:
            log.warning("job %s: log tarball failed: %r", request.job_id, exc)
            return FileResult(spec.lfn, guid=spec.guid, error_code=ErrorCode.LOG_CREATION_FAILED,
                              diag=clip_diag(f"cannot create the log tarball {tarball}: {exc}"))
        return await self._stage_out(request, spec)

    async def _attempts(self, request: Request, spec: FileSpec, direction: str, size: int | None,
                        attempt: Attempt) -> FileResult:
        """Try the endpoints in order (primary first) until one transfer succeeds."""
        codes = IN_CODES if direction == "in" else OUT_CODES
        result = FileResult(spec.lfn, guid=spec.guid)
        if not request.endpoints:
            result.error_code = codes[Reason.IO]
            result.diag = f"no storage endpoint given for {spec.lfn}"
            return result
        relative = deterministic_path(spec.scope, spec.lfn)
        failures: list[tuple[str, str]] = []  # (which endpoint, what went wrong)
        for i, endpoint in enumerate(request.endpoints):
            role = "primary" if i == 0 else "alternative"
            url = join_url(endpoint.url, relative)
            transfer = Transfer(request.job_id, spec.lfn, direction, size)
            self.transfers.add(transfer)
            try:
                fsize, adler = await attempt(url, transfer)
            except TransferError as exc:
                log.warning("job %s: %s of %s via %s failed: %s", request.job_id, direction, spec.lfn,
                            endpoint.name, exc.diag)
                result.error_code = codes[exc.reason]
                failures.append((f"{role} endpoint {endpoint.name}", exc.diag))
                if exc.reason in LOCAL_REASONS[direction]:
                    break
                continue
            except Exception as exc:  # a mover's bug fails this file, not the request
                log.exception("job %s: %s of %s via %s failed", request.job_id, direction, spec.lfn, endpoint.name)
                result.error_code = codes[Reason.IO]
                failures.append((f"{role} endpoint {endpoint.name}", f"unexpected error: {exc!r}"))
                continue
            finally:
                self.transfers.discard(transfer)
            result.status, result.error_code = "done", 0
            result.fsize, result.checksum = fsize, f"ad:{adler}"
            result.surl, result.endpoint = url, endpoint.name
            if failures:
                verb = "stored on" if direction == "out" else "read from"
                result.diag = clip_diag(f"{_joined(failures)}; {verb} alternative endpoint {endpoint.name}")
            return result
        alone = len(request.endpoints) == 1
        result.diag = clip_diag(failures[0][1] if alone else _joined(failures))
        return result


def _joined(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{where}: {diag}" for where, diag in failures)


def _failed(lfns: list[str], diag: str) -> list[FileResult]:
    return [FileResult(lfn, error_code=ErrorCode.PILOT_EXCEPTION, diag=diag) for lfn in lfns]


def _summary(files: list[FileResult], started: float,
             failure: tuple[int, str] | None = None) -> dict[str, Any]:
    first = next((f for f in files if f.status != "done"), None)
    code, diag = failure or ((first.error_code, first.diag) if first else (0, ""))
    return {"ok": failure is None and first is None, "error_code": int(code), "diag": diag,
            "seconds": round(time.monotonic() - started, 3), "files": [asdict(f) for f in files]}


# --- request parsing ---------------------------------------------------------------------


def _lfns(m: dict[str, Any]) -> list[str]:
    """The file names a request mentions, however broken it is (to report each as failed)."""
    entries = [m.get("log")] if m.get("kind") == "stagelog" else m.get("files")
    if not isinstance(entries, list):
        return []
    return [e["lfn"] for e in entries if isinstance(e, dict) and isinstance(e.get("lfn"), str)]


def parse_request(kind: str, job_id: int, m: dict[str, Any]) -> Request:
    """A typed request, or BadRequest saying what is wrong with it."""
    request_id, workdir = request_id_of(m), workdir_of(m)
    if not isinstance(m.get("endpoints"), list):  # the stager needs them given, even if empty
        raise BadRequest(f"endpoints must be a list of {{name, url}}, got {m.get('endpoints')!r:.200}")
    request = Request(kind, job_id, request_id, workdir, endpoints_of(m), [])
    if kind == "stagelog":
        request.files = [_file(m.get("log"), "log")]
        request.tarball_dir = _safe_name(m.get("tarball_dir"), "tarball_dir")
        exclude = m.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            raise BadRequest("exclude must be a list of file names")
        request.exclude = exclude
    else:
        files = m.get("files")
        if not isinstance(files, list):
            raise BadRequest("no files list")
        request.files = [_file(f, "input" if kind == "stagein" else "output") for f in files]
    lfns = [f.lfn for f in request.files]
    if len(set(lfns)) != len(lfns):
        raise BadRequest("the same lfn appears twice")
    return request


def _safe_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} missing or not a string")
    try:
        return check_lfn(value)
    except JobDefinitionError as exc:
        raise BadRequest(f"{what}: {exc.diag}") from None


def _file(d: Any, role: str) -> FileSpec:
    if not isinstance(d, dict):
        raise BadRequest(f"{role} file entry is not an object: {d!r:.100}")
    lfn = _safe_name(d.get("lfn"), f"{role} lfn")
    scope = d.get("scope")
    if not isinstance(scope, str) or not scope:
        raise BadRequest(f"{role} file {lfn} has no scope")
    spec = FileSpec(lfn=lfn, scope=scope, guid=str(d.get("guid") or ""),
                    ddm_endpoint=str(d.get("ddm_endpoint") or ""), dataset=str(d.get("dataset") or ""))
    if role == "input":
        fsize = d.get("fsize")
        if isinstance(fsize, str) and fsize.isdigit():
            fsize = int(fsize)
        if fsize is not None and (isinstance(fsize, bool) or not isinstance(fsize, int) or fsize < 0):
            raise BadRequest(f"input file {lfn}: fsize {fsize!r} is not a size")
        spec.fsize = fsize
        checksum = d.get("checksum")
        if checksum is not None and not isinstance(checksum, str):
            raise BadRequest(f"input file {lfn}: checksum {checksum!r} is not a string")
        try:
            spec.checksum = parse_checksum(checksum) if checksum else None
        except JobDefinitionError as exc:
            raise BadRequest(f"input file {lfn}: {exc.diag}") from None
    return spec
