"""A local job server speaking the new PanDA pilot API (``nodepilot serve``).

It hands out the job definitions of a directory and keeps every update in SQLite. Requests are
treated as the real panda-server treats them (pandaserver/server/panda.py and api/v1/common.py):
parameters are checked against the handlers' Python signatures, a form-encoded POST arrives as
strings, and the reply is JSON only when the request asked for it. There is no authentication:
it listens on loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Union, get_args, get_origin
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

log = logging.getLogger(__name__)

JSON = "application/json"
SC_SUCCESS = 0
SC_INVALID = 50
VALID_JOB_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")
FINAL_STATES = ("finished", "failed")
PANDA_TIME = "%Y-%m-%d %H:%M:%S"
MAX_BODY_BYTES = 64 * 1024 * 1024


def response(success: bool, message: str = "", data: Any = None) -> dict[str, Any]:
    return {"success": success, "message": message, "data": data}


# --- parameter validation as in panda-server's request_validation --------------------------
def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _accepts(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_accepts(value, arg) for arg in get_args(annotation))
    if origin is not None:  # list[int], dict[str, Any]: the container type, list items too
        if not isinstance(value, origin):
            return False
        args = get_args(annotation)
        return not (origin is list and args) or all(isinstance(item, args[0]) for item in value)
    if annotation is Any:
        return True
    return isinstance(value, annotation)


def call_validated(func: Callable[..., dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Bind ``params`` to ``func``'s signature and check each given value with isinstance against
    its annotation (so a JSON "12" for an int is refused, and true passes for an int, as there)."""
    sig = inspect.signature(func, eval_str=True)
    try:
        bound = sig.bind(**params)
    except TypeError as exc:
        return response(False, f"Argument error: {exc}")
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if param.annotation is inspect.Parameter.empty or param.default == value:
            continue
        if not _accepts(value, param.annotation):
            origin = get_origin(param.annotation)
            expected = origin if origin not in (None, Union, types.UnionType) else param.annotation
            return response(False, f"Type error: '{name}' must be of type {_type_name(expected)}, "
                                   f"got {type(value).__name__}.")
    return func(*bound.args, **bound.kwargs)


# --- job definitions ----------------------------------------------------------------------
class JobCatalog:
    """The job definitions of a directory, read anew on each request (files may be added)."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self._warned: set[tuple[str, int]] = set()

    def scan(self) -> Iterator[tuple[str, Any]]:
        """(source, definition) in file-name order; source is ``<file>#<index>``."""
        if not self.jobs_dir.is_dir():
            self._warn_once(str(self.jobs_dir), 0, "no such directory")
            return
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                mtime = path.stat().st_mtime_ns if path.exists() else 0
                self._warn_once(path.name, mtime, f"skipped, not readable JSON: {exc}")
                continue
            items = content if isinstance(content, list) else [content]
            for index, definition in enumerate(items):
                yield f"{path.name}#{index}", definition

    def _warn_once(self, name: str, mtime: int, what: str) -> None:
        if (name, mtime) not in self._warned:
            self._warned.add((name, mtime))
            log.warning("job definitions %s: %s", name, what)


def _number(definition: Any, key: str) -> int | None:
    try:
        return int(definition.get(key))
    except (AttributeError, TypeError, ValueError):
        return None


# --- storage ------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT UNIQUE NOT NULL,      -- <file name>#<index in the file>
    panda_id INTEGER,                 -- NULL: the definition has no usable PandaID
    attempt_nr INTEGER NOT NULL,
    status TEXT NOT NULL,
    definition TEXT NOT NULL,
    acquire_params TEXT NOT NULL,
    dispatched_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    start_time TEXT,
    end_time TEXT
);
CREATE INDEX IF NOT EXISTS jobs_panda_id ON jobs (panda_id);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    panda_id INTEGER NOT NULL,
    time REAL NOT NULL,
    params TEXT NOT NULL,             -- the parameters of the call as received, JSON
    command TEXT,
    applied INTEGER NOT NULL          -- 0: recorded only (unknown job, wrong attempt, already final)
);
CREATE INDEX IF NOT EXISTS updates_panda_id ON updates (panda_id);
"""


class JobStore:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def dispatched_sources(self) -> set[str]:
        with self.lock:
            return {row["source"] for row in self.db.execute("SELECT source FROM jobs")}

    def record_dispatch(self, source: str, definition: Any, acquire_params: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            self.db.execute(
                "INSERT INTO jobs (source, panda_id, attempt_nr, status, definition, acquire_params,"
                " dispatched_at, modified_at) VALUES (?, ?, ?, 'sent', ?, ?, ?, ?)",
                (source, _number(definition, "PandaID"), _number(definition, "attemptNr") or 0,
                 json.dumps(definition), json.dumps(acquire_params), now, now))

    def record_update(self, job_id: int, status: str, attempt_nr: int | None, params: dict[str, Any],
                      times: dict[str, str]) -> str | None:
        """Apply one accepted update_job call and keep it; return the command for the pilot."""
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                job = self.db.execute("SELECT * FROM jobs WHERE panda_id = ? ORDER BY id DESC LIMIT 1",
                                      (job_id,)).fetchone()
                command: str | None = None
                applied = False
                if job is None or (attempt_nr is not None and attempt_nr != job["attempt_nr"]):
                    command = "tobekilled"  # not ours to run (any more)
                elif job["status"] not in FINAL_STATES:
                    applied = True
                    self.db.execute(
                        "UPDATE jobs SET status = ?, modified_at = ?, start_time = COALESCE(?, start_time),"
                        " end_time = COALESCE(?, end_time) WHERE id = ?",
                        (status, now, times.get("start_time"), times.get("end_time"), job["id"]))
                self.db.execute(
                    "INSERT INTO updates (panda_id, time, params, command, applied) VALUES (?, ?, ?, ?, ?)",
                    (job_id, now, json.dumps(params), command, int(applied)))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return command

    def jobs(self, panda_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            if panda_id is None:
                rows = self.db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = self.db.execute("SELECT * FROM jobs WHERE panda_id = ? ORDER BY id DESC LIMIT 1",
                                       (panda_id,)).fetchall()
            return [self._job(row) for row in rows]

    def _job(self, row: sqlite3.Row) -> dict[str, Any]:
        updates = self.db.execute("SELECT * FROM updates WHERE panda_id = ? ORDER BY id",
                                  (row["panda_id"],)).fetchall() if row["panda_id"] is not None else []
        return {
            "PandaID": row["panda_id"], "status": row["status"], "attemptNr": row["attempt_nr"],
            "source": row["source"], "dispatchedAt": row["dispatched_at"], "modifiedAt": row["modified_at"],
            "startTime": row["start_time"], "endTime": row["end_time"],
            # the parameters as received (never named so: they passed the signature check) and the answer
            "updates": [{**json.loads(u["params"]), "time": u["time"], "command": u["command"],
                         "applied": bool(u["applied"])} for u in updates],
        }


# --- the API handlers: the signatures are those of pandaserver/api/v1/pilot_api.py -----------
class PilotApi:
    def __init__(self, catalog: JobCatalog, store: JobStore) -> None:
        self.catalog, self.store = catalog, store
        self.methods: dict[str, Callable[..., dict[str, Any]]] = {
            "acquire_jobs": self.acquire_jobs, "update_job": self.update_job}
        self._lock = threading.Lock()
        self._params: dict[str, Any] = {}  # the call being served, as received (kept with updates)

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._params = params
            return call_validated(self.methods[method], params)

    def acquire_jobs(
        self,
        site_name: str,
        timeout: int = 60,
        memory: int | None = None,
        disk_space: int | None = None,
        prod_source_label: str | None = None,
        node: str | None = None,
        computing_element: str | None = None,
        prod_user_id: str | None = None,
        get_proxy_key: str | None = None,
        task_id: int | None = None,
        n_jobs: int = 1,
        background: bool | None = None,
        resource_type: str | None = None,
        harvester_id: str | None = None,
        worker_id: int | None = None,
        scheduler_id: str | None = None,
        job_type: str | None = None,
        via_topic: bool | None = None,
        remaining_time=None,  # untyped in the real server, so never type-checked
        target_architecture: dict[str, Any] | str | None = None,
    ) -> dict[str, Any]:
        taken = self.store.dispatched_sources()
        picked = []
        for source, definition in self.catalog.scan():
            if len(picked) >= max(1, n_jobs):
                break
            if source not in taken:
                picked.append((source, definition))
        if not picked:
            return response(False, "No jobs in PanDA")
        for source, definition in picked:
            self.store.record_dispatch(source, definition, self._params)
        n_sent = len(taken)
        jobs = [{**definition, "StatusCode": SC_SUCCESS, "nSent": n_sent} if isinstance(definition, dict)
                else definition for _source, definition in picked]  # broken ones as they are
        log.info("acquire_jobs %s/%s: %s", site_name, node, ", ".join(source for source, _ in picked))
        return response(True, data={"StatusCode": SC_SUCCESS, "jobs": jobs})

    def update_job(
        self,
        job_id: int,
        job_status: str,
        job_output_report: str = "",
        node: str | None = None,
        cpu_consumption_time: int | None = None,
        cpu_consumption_unit: str | None = None,
        scheduler_id: str | None = None,
        pilot_id: str | None = None,
        site_name: str | None = None,
        pilot_log: str = "",
        meta_data: str = "",
        cpu_conversion_factor: float | int | None = None,
        trans_exit_code: int | None = None,
        pilot_error_code: int | None = None,
        pilot_error_diag: str | None = None,
        exe_error_code: int | None = None,
        exe_error_diag: str | None = None,
        pilot_timing: str | None = None,
        start_time: str | None = None,
        end_time: str | None = None,
        n_events: int | None = None,
        n_input_files: int | None = None,
        batch_id: str | None = None,
        attempt_nr: int | None = None,
        job_metrics: str | None = None,
        stdout: str = "",
        job_sub_status: str | None = None,
        core_count: int | None = None,
        max_rss: int | float | None = None,
        max_vmem: int | float | None = None,
        max_swap: int | float | None = None,
        max_pss: int | float | None = None,
        avg_rss: int | float | None = None,
        avg_vmem: int | float | None = None,
        avg_swap: int | float | None = None,
        avg_pss: int | float | None = None,
        tot_rchar: int | float | None = None,
        tot_wchar: int | float | None = None,
        tot_rbytes: int | float | None = None,
        tot_wbytes: int | float | None = None,
        rate_rchar: int | float | None = None,
        rate_wchar: int | float | None = None,
        rate_rbytes: int | float | None = None,
        rate_wbytes: int | float | None = None,
        corrupted_files: str | None = None,
        mean_core_count: int | None = None,
        cpu_architecture_level: str | None = None,
        grid: str | None = None,
        source_site: str | None = None,
        destination_site: str | None = None,
        timeout: int = 60,
    ) -> dict[str, Any]:
        if job_status not in VALID_JOB_STATES:
            return response(False, f"Invalid job status: {job_status}", {"StatusCode": SC_INVALID})
        times = {}
        for key, value in (("start_time", start_time), ("end_time", end_time)):
            if value is None:
                continue
            try:  # the real server drops a time in any other form (and logs it)
                times[key] = datetime.strptime(value, PANDA_TIME).strftime(PANDA_TIME)
            except ValueError:
                log.warning("update_job %s: invalid %s=%r ignored", job_id, key, value)
        command = self.store.record_update(job_id, job_status, attempt_nr, self._params, times)
        log.info("update_job %s: %s%s", job_id, job_status, f" -> {command}" if command else "")
        return response(True, data={"StatusCode": SC_SUCCESS, "command": command})


# --- HTTP ---------------------------------------------------------------------------------
def parse_params(content_type: str | None, content_encoding: str | None, body: bytes) -> dict[str, Any]:
    """JSON bodies as such (gzipped if so marked); anything else as a form, i.e. all strings."""
    if content_type == JSON:
        if content_encoding == "gzip":
            body = gzip.decompress(body)
        params = json.loads(body)
        if not isinstance(params, dict):
            raise TypeError(f"argument after ** must be a mapping, not {type(params).__name__}")
        return params
    if (content_type or "").startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    return {}


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(jobs_dir: Path, db_path: Path) -> FastAPI:
    catalog = JobCatalog(Path(jobs_dir))
    api = PilotApi(catalog, JobStore(Path(db_path)))
    log.info("%d job definitions in %s", sum(1 for _ in catalog.scan()), jobs_dir)  # warns of bad files now
    app = FastAPI(title="nodepilot job server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.api_route("/api/v1/pilot/{method}", methods=["GET", "POST"])
    async def pilot_call(method: str, request: Request) -> PlainTextResponse:
        if method not in api.methods:
            return PlainTextResponse(f"ERROR : method {method} is forbidden", status_code=403)
        content_type = request.headers.get("content-type")
        # JSON out when the request is JSON or asks for it (an exact match, as there)
        json_app = content_type == JSON or request.headers.get("accept") == JSON
        try:
            body = await _read_body(request)
            if request.method != "POST":
                result = response(False, f"expecting POST, received {request.method}")
            else:
                params = parse_params(content_type, request.headers.get("content-encoding"), body)
                result = await asyncio.to_thread(api.call, method, params)
        except HTTPException:
            raise
        except Exception as exc:  # the real server answers any failure so
            log.warning("%s failed: %r", method, exc)
            return PlainTextResponse(str(exc), status_code=500)
        # the real server labels JSON replies text/plain as well
        return PlainTextResponse(json.dumps(result) if json_app else str(result))

    @app.get("/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return api.store.jobs()

    @app.get("/jobs/{panda_id}")
    def get_job(panda_id: int) -> dict[str, Any]:
        found = api.store.jobs(panda_id)
        if not found:
            raise HTTPException(404, f"no job {panda_id}")
        return found[0]

    return app


def default_db_path(jobs_dir: Path) -> Path:
    parent = Path(jobs_dir).resolve().parent
    if os.access(parent, os.W_OK):
        return parent / "server.sqlite"
    fd, name = tempfile.mkstemp(prefix="nodepilot-server-", suffix=".sqlite")
    os.close(fd)
    return Path(name)


def run_server(jobs_dir: Path, host: str = "127.0.0.1", port: int = 0, db_path: Path | None = None,
               port_file: Path | None = None) -> None:
    """Serve until interrupted. The socket is bound and listening before the port is announced,
    so whoever reads the port (stdout or ``port_file``) can connect at once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db_path = Path(db_path) if db_path else default_db_path(Path(jobs_dir))
    app = create_app(Path(jobs_dir), db_path)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    log.info("serving the jobs in %s; updates kept in %s", Path(jobs_dir).resolve(), db_path)
    print(f"nodepilot serve: listening on http://{shown_host}:{bound_port}", flush=True)
    if port_file is not None:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(f"{bound_port}\n")
        tmp.replace(port_file)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
