"""The ``rucio`` mover: files found and registered through Rucio, copied by the other movers.

A queue whose copytool for an activity is ``rucio`` gives the stager endpoints ``rucio:///<RSE>``
(nodepilot/queue/activities.py). Such an endpoint names an RSE, not a place: before any copy the
stager asks this mover to turn it into real URLs (``prepare``), and after a stage-out to register
what was stored (``finish``); the copies themselves go through the mover of each URL's scheme (XRootD,
WebDAV, posix...) with their own checks, retries and traces (docs/movers.md, "Rucio").

Stage-in: ``list_replicas`` of ``scope:lfn`` for the allowed schemes; DISK replicas only; LAN replicas
(on an RSE the stage-in request names, i.e. the queue's ``read_lan`` storages) before WAN ones, each
kept only when ``allow_lan``/``allow_wan`` say so; then by scheme preference and Rucio's priority, one
URL per RSE. The size and adler32 the copies are checked against are Rucio's. No usable replica:
"replica not found" (1100).

Stage-out: for each RSE of the activity (primary first), the write URL Rucio gives for the first
allowed scheme the RSE writes with; after the copy (checked on the storage by the copying mover) the
replica is registered with its size and adler32 (``registration = "pilot"``, the default) or left for the
server side to register (``registration = "server"``, as PanDA production does through its Adder).

Settings: the queue data's ``stager.rucio`` object (docs/movers.md) and the Rucio client configuration
(services/stager/movers/rucio_client.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit

import redis.asyncio as aioredis

from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import Checksum, FileSpec
from nodepilot.queue.model import Endpoint, QueueData
from services.stager.attempts import FileWork
from services.stager.movers.base import Mover, Reason, TransferError, mover_classes
from services.stager.movers.rucio_client import RucioClient, RucioConfig, RucioError
from services.stager.movers.rucio_tokens import RedisTokens
from services.stager.request import FileResult, Request
from services.stager.retry import backoff_delay

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEME = "rucio"
DEFAULT_SCHEMES = ("root", "davs", "https", "file")  # preference order among the schemes we have movers for
REGISTRATION_VALUES = ("pilot", "server")
RUCIO_TRIES, RUCIO_BACKOFF_S, RUCIO_BACKOFF_CAP_S = 3, 0.5, 5.0  # per Rucio call, on transient errors
LISTINGS_KEPT = 64  # requests whose listings are kept (for their files still to start, and retries)


@dataclass(frozen=True)
class RucioSettings:
    allow_lan: bool = True
    allow_wan: bool = False
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    registration: str = "pilot"
    site: str = ""  # client location for Rucio's replica sorting (default: the queue's site)
    trace_url: str = ""  # default: <rucio_host>/traces/

    @classmethod
    def from_queue(cls, queue: QueueData | None) -> RucioSettings:
        raw = (queue.stager or {}).get("rucio") if queue is not None and isinstance(queue.stager, dict) else None
        raw = raw if isinstance(raw, dict) else {}
        values: dict[str, Any] = {"site": queue.site if queue is not None else ""}
        for name in ("allow_lan", "allow_wan"):
            if isinstance(raw.get(name), bool):
                values[name] = raw[name]
        schemes = raw.get("schemes")
        if isinstance(schemes, list) and schemes and all(isinstance(s, str) for s in schemes):
            values["schemes"] = tuple(s.lower() for s in schemes)
        if raw.get("registration") in REGISTRATION_VALUES:
            values["registration"] = raw["registration"]
        elif "registration" in raw:
            log.warning("queue data: stager.rucio.registration=%r is not pilot or server: the pilot registers",
                        raw["registration"])
        for name in ("site", "trace_url"):
            if isinstance(raw.get(name), str) and raw[name]:
                values[name] = raw[name]
        return cls(**values)


def rse_of(endpoint: Endpoint) -> str:
    """The RSE an endpoint ``rucio:///<RSE>`` names (its name when the URL names none)."""
    path = urlsplit(endpoint.url).path.strip("/")
    return path.split("/")[0] if path else endpoint.name


def split_pfn(pfn: str, lfn: str) -> str | None:
    """The directory part of a replica URL ending in ``/<lfn>`` (None otherwise): the stager joins the
    lfn back on (services/stager/paths.join_url)."""
    tail = "/" + quote(lfn)
    return pfn[: -len(tail)] if pfn.endswith(tail) else None


class RucioMover(Mover):
    """Resolves ``rucio://`` endpoints; never copies by itself."""

    schemes = (SCHEME,)
    resolves_endpoints: ClassVar[bool] = True

    def __init__(self, queue: QueueData | None = None, environ: dict[str, str] | None = None,
                 redis: aioredis.Redis | None = None) -> None:
        """``redis``: the pilot's, where the auth token is kept for the pilot's next stagers."""
        self.settings = RucioSettings.from_queue(queue)
        self.config = RucioConfig.load((queue.stager or {}).get("rucio") if queue is not None else None, environ)
        self.redis = redis
        self._client: RucioClient | None = None
        # request id -> each of its inputs' entry in the request's list_replicas answer (the latest requests only)
        self._listings: dict[str, dict[tuple[str, str], asyncio.Future[list[dict[str, Any]] | None]]] = {}
        self._readers: set[asyncio.Future[None]] = set()

    @property
    def client(self) -> RucioClient:
        if self._client is None:
            tokens = RedisTokens(self.redis, self.config.identity()) if self.redis is not None else None
            self._client = RucioClient(self.config, tokens)
        return self._client

    def trace_url(self) -> str:
        if self.settings.trace_url:
            return self.settings.trace_url
        return f"{self.config.host.rstrip('/')}/traces/" if self.config.host.startswith("http") else ""

    async def copy_in(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        raise TransferError(Reason.PROTOCOL, "rucio:// endpoints are resolved by the stager before a copy")

    async def copy_out(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        raise TransferError(Reason.PROTOCOL, "rucio:// endpoints are resolved by the stager before a copy")

    # --- the stager's hooks -----------------------------------------------------------------------
    async def warm(self) -> None:
        """When the stager starts: the auth token, so that a pilot's first stage-in (often its only one)
        does not wait for it. A failure is only noted: the first call tries again and says why."""
        if self.config.problem():
            return
        try:
            await self.client.authenticate()
        except RucioError as exc:
            log.info("Rucio: no token yet (%s); the first call asks again", exc)

    async def prepare(self, work: FileWork) -> FileResult | None:
        """Replace the work's ``rucio://`` endpoints with real ones; a FileResult when there are none."""
        failed = ErrorCode.STAGEIN_FAILED if work.direction == "in" else ErrorCode.STAGEOUT_FAILED
        problem = self.config.problem()
        if problem:
            return _failure(work, failed, problem)
        resolve = self._replicas if work.direction == "in" else self._destinations
        try:
            return await _retried(lambda: resolve(work))
        except RucioError as exc:
            if exc.kind == "DataIdentifierNotFound":
                return _failure(work, ErrorCode.REPLICA_NOT_FOUND, f"{work.spec.scope}:{work.spec.lfn} is not "
                                                                   "known to Rucio")
            return _failure(work, failed, str(exc))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _failure(work, failed, f"unexpected answer from Rucio: {exc!r}")

    async def finish(self, work: FileWork, result: FileResult) -> FileResult:
        """After a stage-out: register the stored replica (unless the server side does)."""
        if work.direction != "out" or result.status != "done" or self.settings.registration != "pilot":
            return result
        spec = work.spec
        adler32 = result.checksum.removeprefix("ad:")
        try:
            await _retried(lambda: self.client.add_replica(result.endpoint, spec.scope, spec.lfn,
                                                           int(result.fsize or 0), adler32))
        except RucioError as exc:
            result.status, result.error_code = "failed", int(ErrorCode.STAGEOUT_FAILED)
            result.diag = clip_diag(f"stored at {result.surl} but not registered in Rucio: {exc}")
            log.warning("job %s: %s", work.request.job_id, result.diag)
        return result

    # --- stage-in -----------------------------------------------------------------------------------
    async def _replicas(self, work: FileWork) -> FileResult | None:
        spec = work.spec
        lan = {rse_of(e): i for i, e in reversed(list(enumerate(work.endpoints)))}  # RSE -> its first place
        items = await self._listing(work)
        item = next((i for i in items if i.get("scope") == spec.scope and i.get("name") == spec.lfn), None)
        if item is None:
            return _failure(work, ErrorCode.REPLICA_NOT_FOUND, f"Rucio lists no replica of {spec.scope}:{spec.lfn}")
        work.endpoints, skipped = self._choose(item, lan, spec.lfn)
        work.relative = spec.lfn  # each endpoint is now the replica's directory
        if not work.endpoints:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            return _failure(work, ErrorCode.REPLICA_NOT_FOUND,
                            f"no usable replica of {spec.scope}:{spec.lfn} among {len(item.get('pfns') or {})}{why}")
        catalogue = (item.get("bytes") if isinstance(item.get("bytes"), int) else spec.fsize,
                     Checksum("adler32", str(item["adler32"]).lower().zfill(8)) if item.get("adler32")
                     else spec.checksum)
        if (spec.fsize, spec.checksum) != catalogue and spec.fsize is not None:
            log.warning("job %s: %s:%s: the job says %s bytes %s, Rucio %s bytes %s: checking against Rucio's",
                        work.request.job_id, spec.scope, spec.lfn, spec.fsize, spec.checksum, *catalogue)
        spec.fsize, spec.checksum = catalogue
        work.size = spec.fsize
        log.info("job %s: %s:%s replicas, in order: %s", work.request.job_id, spec.scope, spec.lfn,
                 ", ".join(f"{e.name} {e.url}" for e in work.endpoints))
        return None

    def begin(self, request: Request) -> None:
        """Start a stage-in request's listing as soon as the request arrives, before its files reach
        ``prepare``: Rucio's fixed cost per call then runs beside the stager's own steps of the request."""
        if request.direction == "in" and not self.config.problem():
            self._entries(request)

    async def ready(self, request: Request, spec: FileSpec) -> None:
        """Until a stage-in file's line of its request's listing arrived (or the listing ended or failed):
        Rucio lists in its own order (by scope and name), not the request's."""
        if request.direction == "in" and not self.config.problem():
            entry = self._entries(request).get((spec.scope, spec.lfn))
            if entry is not None:
                await asyncio.shield(entry)

    def _entries(self, request: Request) -> dict[tuple[str, str], asyncio.Future[list[dict[str, Any]] | None]]:
        """Each of the request's inputs' entry in the answer to its one ``list_replicas`` call, the call
        started by the first to ask (``begin`` or a file's ``prepare``)."""
        key = request.request_id or f"{request.job_id}:{id(request)}"
        entries = self._listings.get(key)
        if entries is None:
            dids = list(dict.fromkeys((f.scope, f.lfn) for f in request.files))
            loop = asyncio.get_running_loop()
            entries = {d: loop.create_future() for d in dids}
            self._listings[key] = entries
            while len(self._listings) > LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
            reader = asyncio.ensure_future(self._read_listing(dids, entries))
            self._readers.add(reader)  # kept until done: the loop holds tasks only weakly
            reader.add_done_callback(self._readers.discard)
        return entries

    async def _listing(self, work: FileWork) -> list[dict[str, Any]]:
        """The file's entry in Rucio's answer to one ``list_replicas`` call for the whole request, read as
        Rucio streams it (a line per file): each file goes on to its copy as soon as its own line arrives,
        while Rucio is still listing the others. One call rather than one per file or per batch: Rucio's
        fixed cost per call is most of what a listing costs it. A file the call did not answer for (it
        failed or broke off first; a retry) asks for itself."""
        did = (work.spec.scope, work.spec.lfn)
        entry = self._entries(work.request).get(did)
        items = None if entry is None else await asyncio.shield(entry)
        return items if items is not None else await self._list([did])

    async def _read_listing(self, dids: list[tuple[str, str]],
                            entries: dict[tuple[str, str], asyncio.Future[list[dict[str, Any]] | None]]) -> None:
        """Resolve each DID's entry as its line arrives: ``[line]``, ``[]`` when Rucio's answer ended
        without it, None when the call failed before it (whatever the failure: no file waits forever)."""
        outcome: list[dict[str, Any]] | None = None
        try:
            async for item in self.client.replicas(dids, *self._query()):
                entry = entries.get((item.get("scope"), item.get("name")))
                if entry is not None and not entry.done():
                    entry.set_result([item])
            outcome = []
        except (RucioError, ValueError, AttributeError) as exc:
            log.info("Rucio: list_replicas of %d files: %s; each file not answered asks for itself", len(dids), exc)
        finally:
            for entry in entries.values():
                if not entry.done():
                    entry.set_result(outcome)

    def _list(self, dids: list[tuple[str, str]]) -> Awaitable[list[dict[str, Any]]]:
        return self.client.list_replicas(dids, *self._query())

    def _query(self) -> tuple[list[str], str, str]:
        """Schemes, client site and sort of a ``list_replicas`` call. Rucio's ``geoip`` sorting (nearest
        WAN replica first) only when WAN replicas may be read: it costs the server lookups per file, and
        LAN replicas are ordered here (the request's order), whatever Rucio's order of them."""
        return list(self.settings.schemes), self.settings.site, "geoip" if self.settings.allow_wan else "random"

    def _choose(self, item: dict[str, Any], lan: dict[str, int], lfn: str) -> tuple[list[Endpoint], list[str]]:
        """One URL per RSE, LAN first, then by scheme preference and Rucio's priority; LAN RSEs alike so far
        in the request's order of them (Rucio lists replicas in no particular order)."""
        known = mover_classes()
        ranked: list[tuple[tuple[int, int, int, int], str, str]] = []
        skipped: list[str] = []
        for pfn, info in (item.get("pfns") or {}).items():
            rse, scheme = str(info.get("rse", "")), urlsplit(pfn).scheme.lower()
            is_lan = rse in lan
            if info.get("type", "DISK") != "DISK":
                skipped.append(f"{rse}: {info.get('type')} replica")
            elif not (self.settings.allow_lan if is_lan else self.settings.allow_wan):
                skipped.append(f"{rse}: {'LAN' if is_lan else 'WAN'} replicas not allowed")
            elif scheme not in self.settings.schemes or scheme not in known or scheme == SCHEME:
                skipped.append(f"{rse}: scheme {scheme} not allowed")
            elif split_pfn(pfn, lfn) is None:
                skipped.append(f"{rse}: {pfn} does not end with the file name")
            else:
                key = (0 if is_lan else 1, self.settings.schemes.index(scheme), int(info.get("priority") or 0),
                       lan.get(rse, 0))
                ranked.append((key, rse, pfn))
        chosen: dict[str, str] = {}
        for _, rse, pfn in sorted(ranked):
            chosen.setdefault(rse, pfn)
        return [Endpoint(rse, split_pfn(pfn, lfn) or pfn) for rse, pfn in chosen.items()], skipped

    # --- stage-out ----------------------------------------------------------------------------------
    async def _destinations(self, work: FileWork) -> FileResult | None:
        spec = work.spec
        resolved: list[Endpoint] = []
        notes: list[str] = []
        for endpoint in work.endpoints:
            rse = rse_of(endpoint)
            try:
                pfn = await self._write_url(rse, spec.scope, spec.lfn)
            except RucioError as exc:
                notes.append(f"{rse}: {exc}")
                continue
            head = split_pfn(pfn, spec.lfn) if pfn else None
            if head is None:
                notes.append(f"{rse}: no write URL for an allowed scheme ({', '.join(self.settings.schemes)})")
                continue
            resolved.append(Endpoint(rse, head, endpoint.id))
        if not resolved:
            return _failure(work, ErrorCode.NO_STORAGE_PROTOCOL, "; ".join(notes) or "no RSE to write to")
        work.endpoints, work.relative = resolved, spec.lfn
        return None

    async def _write_url(self, rse: str, scope: str, lfn: str) -> str:
        """Rucio's URL for a new file on ``rse`` with the first allowed scheme the RSE writes with."""
        protocols = await self.client.protocols(rse)
        known = mover_classes()
        for scheme in self.settings.schemes:
            for domain in ("lan", "wan"):
                if scheme in known and any(p.get("scheme") == scheme and _writes(p, domain) for p in protocols):
                    return await self.client.lfn2pfn(rse, scope, lfn, scheme, domain)
        return ""


async def _retried(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again after a pause while Rucio's answer is transient (no answer, HTTP 5xx/429)."""
    for n in range(1, RUCIO_TRIES + 1):
        try:
            return await call()
        except RucioError as exc:
            if not exc.transient or n == RUCIO_TRIES:
                raise
            log.info("Rucio: %s; trying again", exc)
            await asyncio.sleep(backoff_delay(n, RUCIO_BACKOFF_S, RUCIO_BACKOFF_CAP_S))
    raise AssertionError("unreachable")


def _writes(protocol: dict[str, Any], domain: str) -> bool:
    return bool(((protocol.get("domains") or {}).get(domain) or {}).get("write"))


def _failure(work: FileWork, code: int, diag: str) -> FileResult:
    log.warning("job %s: %s of %s: %s", work.request.job_id, work.direction, work.spec.lfn, diag)
    return FileResult(work.spec.lfn, guid=work.spec.guid, error_code=int(code), diag=clip_diag(diag))
