"""The relay dialect (``--api relay``): a compute-node worker reaches the PanDA server only through the
front-end's Redis. Every server call becomes an entry of the ``relay:requests`` stream, which the front-end
(``nodepilot/frontend.py``) serves and forwards; its answer comes back on a list of the request's own,
read with a blocking pop (no polling). Server commands for the worker's jobs arrive on the worker's
command list and are put on the job's event stream, as the monitor does with a direct server's reply.

Keys, in the database of the front-end's Redis URL (workers' own buses live in other databases of the
same Redis, one leased per worker):

- ``relay:requests``       stream  worker -> front-end  {id, worker, method, args, timeout_s}
- ``relay:reply:<id>``     list    front-end -> worker  one JSON answer {ok, value | error, retryable, code, refused}
- ``relay:commands:<worker>`` list front-end -> worker  {jobId, command} (tobekilled, softkill, debug...)
- ``relay:db:<n>``         string  the worker leasing database n (expires unless renewed)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from nodepilot import bus
from nodepilot.errors import ErrorCode
from nodepilot.panda.client import ServerClient, UpdateReply, normalize_command
from nodepilot.panda.errors import ServerError
from nodepilot.proc import pilot_pid

log = logging.getLogger(__name__)

REQUESTS = "relay:requests"
REPLY_TTL_S = 600
CALL_TIMEOUT_S = 300.0  # the front-end's own server call retries for up to ~2 min
LEASE_TTL_S = 600
DEFAULT_DATABASES = 16


def reply_key(request_id: str) -> str:
    return f"relay:reply:{request_id}"


def commands_key(worker: str) -> str:
    return f"relay:commands:{worker}"


def lease_key(db: int) -> str:
    return f"relay:db:{db}"


def default_worker_id(node: str = "") -> str:
    return f"{node or socket.gethostname()}-{pilot_pid()}"


def url_db(url: str) -> int:
    """The database a Redis URL selects (query ``db``, else the path of a redis:// URL, else 0)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if query.get("db", "").isdigit():
        return int(query["db"])
    path = parts.path.strip("/")
    return int(path) if parts.scheme in ("redis", "rediss") and path.isdigit() else 0


def with_db(url: str, db: int) -> str:
    """The same Redis with another database (the ``db`` query parameter wins over a path for redis-py)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), "db": str(db)}
    path = "" if parts.scheme in ("redis", "rediss") else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), parts.fragment))


class RelayClient(ServerClient):
    """The worker's ServerClient: calls go through the front-end. ``bus_url``: the worker's own bus, where
    server commands are delivered (only the client that sends job updates listens for them)."""

    def __init__(self, relay_url: str, worker: str, bus_url: str = "", timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.r = bus.connect(relay_url)
        self.worker, self.bus_url, self.timeout_s = worker, bus_url, timeout_s
        self._listener: asyncio.Task[None] | None = None

    async def _call(self, method: str, args: dict[str, Any], request_id: str | None = None) -> Any:
        request_id = request_id or uuid.uuid4().hex
        try:
            await bus.publish(self.r, REQUESTS, {"id": request_id, "worker": self.worker, "method": method,
                                                 "args": args, "timeout_s": self.timeout_s})
            popped = await self.r.blpop([reply_key(request_id)], timeout=self.timeout_s)
        except (RedisError, OSError) as exc:
            raise ServerError(f"{method}: the front-end's Redis cannot be reached: {exc}", retryable=True) from exc
        if popped is None:
            raise ServerError(f"{method}: no answer from the front-end within {self.timeout_s:.0f} s", retryable=True)
        try:
            answer = json.loads(popped[1])
        except ValueError:
            raise ServerError(f"{method}: garbled answer from the front-end: {popped[1][:200]!r}",
                              retryable=True) from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer if isinstance(answer, dict) else {}
            raise ServerError(f"{method} (through the front-end): {error.get('error') or answer!r}",
                              retryable=bool(error.get("retryable", True)),
                              code=int(error.get("code") or ErrorCode.SERVER_COMMUNICATION),
                              refused=bool(error.get("refused")))
        return answer.get("value")

    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        value = await self._call("acquire_job", {"params": params})
        if value is not None and not isinstance(value, dict):
            raise ServerError(f"acquire_job (through the front-end): not a job definition: {str(value)[:200]!r}")
        return value

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        """Answered once the front-end stored the update (it forwards it, and the server's commands come
        back on the command list). The request id is the update's digest: a retry is not stored twice."""
        self._listen()
        digest = hashlib.sha1(json.dumps([self.worker, fields], sort_keys=True, default=str).encode()).hexdigest()
        value = await self._call("update_job", {"fields": fields}, request_id=f"update-{digest}")
        value = value if isinstance(value, dict) else {}
        return UpdateReply(command=normalize_command(value.get("command")), status_code=int(value.get("status_code")
                                                                                             or 0), raw=value)

    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        value = await self._call("acquire_event_ranges", {"job_id": job_id, "jobset_id": jobset_id,
                                                          "task_id": task_id, "n_ranges": n_ranges})
        if not isinstance(value, list):
            raise ServerError(f"acquire_event_ranges (through the front-end): not a list: {str(value)[:200]!r}",
                              retryable=True)
        return value

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        value = await self._call("update_event_ranges", {"ranges": ranges, "version": version})
        return value if isinstance(value, dict) else {"Returns": None, "Commands": None}

    async def get_event_range_statuses(self, job_id: int, task_id: int) -> dict[str, dict[str, Any]]:
        value = await self._call("get_event_range_statuses", {"job_id": job_id, "task_id": task_id})
        if not isinstance(value, dict):
            raise ServerError(f"get_event_range_statuses (through the front-end): not an object: {str(value)[:200]!r}",
                              retryable=True)
        return value

    async def update_worker_status(self, worker_id: str, harvester_id: str, status: str,
                                   node_id: str | None = None) -> None:
        await self._call("update_worker_status", {"worker_id": worker_id, "harvester_id": harvester_id,
                                                  "status": status, "node_id": node_id})

    async def update_worker_node(self, inventory: dict[str, Any]) -> None:
        await self._call("update_worker_node", {"inventory": inventory})

    async def update_worker_node_gpu(self, gpu: dict[str, Any]) -> None:
        await self._call("update_worker_node_gpu", {"gpu": gpu})

    # --- server commands --------------------------------------------------------------------
    def _listen(self) -> None:
        if self._listener is None and self.bus_url:
            self._listener = asyncio.create_task(self._deliver_commands())

    async def _deliver_commands(self) -> None:
        """Each command for this worker's jobs onto the job's event stream (where the monitor's job waits)."""
        own = bus.connect(self.bus_url)
        try:
            while True:
                try:
                    _key, raw = await self.r.blpop([commands_key(self.worker)], timeout=0)
                    item = json.loads(raw)
                    job_id = bus.job_id_of(item.get("jobId"))
                    command = normalize_command(item.get("command"))
                except (RedisError, OSError) as exc:
                    log.warning("server commands from the front-end cannot be read: %s", exc)
                    return
                except (ValueError, AttributeError):
                    log.warning("malformed server command from the front-end ignored")
                    continue
                if job_id is not None and command is not None:
                    log.info("server command for job %s (through the front-end): %s", job_id, command)
                    await bus.emit(own, job_id, "monitor", "server_command", command=command.lower())
        finally:
            with contextlib.suppress(Exception):
                await own.aclose()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener], timeout=2)
        with contextlib.suppress(Exception):
            await self.r.aclose()


class DatabaseLease:
    """A database of the front-end's Redis for this worker's bus, so workers sharing that Redis never see
    each other's streams and keys. Held while renewed; emptied when taken and when given back."""

    def __init__(self, relay_url: str, worker: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.relay_url, self.worker, self.ttl_s = relay_url, worker, ttl_s
        self.db: int | None = None

    async def acquire(self) -> str:
        """The bus URL of a free database; RuntimeError when every one is leased, RedisError when the
        front-end's Redis cannot be reached (after two quick retries, not redis-py's half minute)."""
        r = bus.connect(self.relay_url)
        r.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.2), 2))
        try:
            own = url_db(self.relay_url)
            try:
                n = int((await r.config_get("databases")).get("databases", DEFAULT_DATABASES))
            except ResponseError:  # CONFIG may be disabled on a managed Redis
                n = DEFAULT_DATABASES
            for db in range(n):
                if db != own and await r.set(lease_key(db), self.worker, nx=True, ex=int(self.ttl_s)):
                    self.db = db
                    break
            else:
                raise RuntimeError(f"every database of the front-end's Redis ({n}) is leased by a worker: "
                                   "start it with a larger 'databases' setting")
        finally:
            await r.aclose()
        url = with_db(self.relay_url, self.db)
        await self._flush(url)
        log.info("worker %s: bus in database %s of the front-end's Redis", self.worker, self.db)
        return url

    async def keep(self) -> None:
        """Renew the lease until cancelled (a timer, every third of its lifetime)."""
        r = bus.connect(self.relay_url)
        try:
            while True:
                await asyncio.sleep(self.ttl_s / 3)
                with contextlib.suppress(RedisError, OSError):
                    await r.set(lease_key(self.db or 0), self.worker, ex=int(self.ttl_s))
        finally:
            with contextlib.suppress(Exception):
                await r.aclose()

    async def release(self) -> None:
        if self.db is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._flush(with_db(self.relay_url, self.db))
            r = bus.connect(self.relay_url)
            try:
                if await r.get(lease_key(self.db)) == self.worker:
                    await r.delete(lease_key(self.db))
            finally:
                await r.aclose()
        self.db = None

    @staticmethod
    async def _flush(url: str) -> None:
        r = bus.connect(url)
        try:
            await r.flushdb()
        finally:
            await r.aclose()
