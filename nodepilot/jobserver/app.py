"""A local job server speaking the PanDA pilot protocol in both dialects (``nodepilot serve``).

It hands out the job definitions of a directory (and their event ranges) and keeps every update in
SQLite. Requests are treated as the real panda-server treats them (pandaserver/server/panda.py and
api/v1/common.py): new-API parameters are checked against the handlers' Python signatures, legacy
ones are passed to functions taking strings, a form-encoded POST arrives as strings, and the reply
is JSON only when the request asked for it. Without TLS there is no authentication: it listens on
loopback unless told otherwise; with TLS (``server_tls``) a client certificate or a token is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from nodepilot.jobserver.api import Dispatcher, Handlers, PilotApi, response
from nodepilot.jobserver.events import EventApi
from nodepilot.jobserver.faults import Faults
from nodepilot.jobserver.legacy import LegacyApi, encode
from nodepilot.jobserver.store import JobCatalog, JobStore
from nodepilot.jobserver.tls import AuthMiddleware, TlsSettings, recording_peer_certificates, terminating_tls

__all__ = ["PilotApi", "TlsSettings", "create_app", "run_server"]

log = logging.getLogger(__name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 64 * 1024 * 1024


# --- request bodies -------------------------------------------------------------------------
def _form(body: bytes) -> dict[str, Any]:
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _object(body: bytes) -> dict[str, Any]:
    params = json.loads(body)
    if not isinstance(params, dict):  # what calling a function with **params says
        raise TypeError(f"argument after ** must be a mapping, not {type(params).__name__}")
    return params


def parse_params(content_type: str | None, content_encoding: str | None, body: bytes) -> dict[str, Any]:
    """New API: JSON bodies as such (gzipped if so marked); anything else as a form, i.e. strings."""
    if content_type == JSON:
        return _object(gzip.decompress(body) if content_encoding == "gzip" else body)
    if (content_type or "").startswith(FORM):
        return _form(body)
    return {}


def parse_legacy_params(request: Request, body: bytes) -> dict[str, Any]:
    """Legacy API: a JSON body is always gunzipped, and its true/false become "True"/"False"; a
    form is strings; a GET has its parameters in the query string."""
    if request.method in ("GET", "HEAD"):
        return dict(parse_qsl(request.url.query, keep_blank_values=True))
    content_type = request.headers.get("content-type")
    if content_type == JSON:
        params = _object(gzip.decompress(body))
        return {k: str(v) if isinstance(v, bool) else v for k, v in params.items()}
    return _form(body) if (content_type or "").startswith(FORM) else {}


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _failure(what: str, exc: Exception) -> PlainTextResponse:
    """How the real server answers any exception: HTTP 500 with the exception's text."""
    log.warning("%s failed: %r", what, exc)
    return PlainTextResponse(str(exc), status_code=500)


# --- the application ------------------------------------------------------------------------
def create_app(jobs_dir: Path, db_path: Path, *, legacy_api: bool = True, event_update_500: bool = False) -> FastAPI:
    """``legacy_api=False``: a server that dropped the legacy dialect, as panda-server did in 2026 (every
    ``/server/panda/<method>`` is answered HTTP 403 "ERROR : method <method> is forbidden").
    ``event_update_500``: answer update_event_ranges with HTTP 500 after applying it (panda-server 1.0.4)."""
    catalog = JobCatalog(Path(jobs_dir))
    dispatcher = Dispatcher(catalog, JobStore(Path(db_path)))
    store = dispatcher.store
    v1: dict[str, Handlers] = {"pilot": PilotApi(dispatcher), "event": EventApi(dispatcher, event_update_500)}
    legacy = LegacyApi(dispatcher)
    log.info("%d job definitions in %s", sum(1 for _ in catalog.scan()), jobs_dir)  # warns of bad files now
    app = FastAPI(title="nodepilot job server", docs_url=None, redoc_url=None, openapi_url=None)
    faults = Faults()

    @app.api_route("/api/v1/{module}/{method}", methods=["GET", "POST"])
    async def v1_call(module: str, method: str, request: Request) -> PlainTextResponse:
        api = v1.get(module)
        if api is None or method not in api.methods:
            return PlainTextResponse(f"ERROR : method {method} is forbidden", status_code=403)
        if failure := faults.answer(method):
            return failure
        content_type = request.headers.get("content-type")
        # JSON out when the request is JSON or asks for it (an exact match, as there)
        json_app = content_type == JSON or request.headers.get("accept") == JSON
        try:
            body = await _read_body(request)
            expected = "GET" if method in api.get_methods else "POST"
            if request.method != expected:
                result = response(False, f"expecting {expected}, received {request.method}")
            else:
                params = (dict(parse_qsl(request.url.query, keep_blank_values=True)) if expected == "GET"
                          else parse_params(content_type, request.headers.get("content-encoding"), body))
                result = await asyncio.to_thread(api.call, method, params)
        except HTTPException:
            raise
        except Exception as exc:
            return _failure(method, exc)
        # the real server labels JSON replies text/plain as well
        return PlainTextResponse(json.dumps(result) if json_app else str(result))

    @app.api_route("/server/panda/{method}", methods=["GET", "POST"])
    async def legacy_call(method: str, request: Request) -> Response:
        if not legacy_api or method not in legacy.methods:
            return PlainTextResponse(f"ERROR : method {method} is forbidden", status_code=403)
        if failure := faults.answer(method):
            return failure
        accept_json = JSON in request.headers.get("accept", "")  # a substring test, as there
        try:
            params = parse_legacy_params(request, await _read_body(request))
            result = await asyncio.to_thread(legacy.call, method, params, accept_json)
        except HTTPException:
            raise
        except Exception as exc:
            return _failure(method, exc)
        content, media_type = encode(result, accept_json)
        return Response(content, media_type=media_type)

    @app.get("/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return store.jobs()

    @app.get("/jobs/{panda_id}")
    def get_job(panda_id: int) -> dict[str, Any]:
        found = store.jobs(panda_id)
        if not found:
            raise HTTPException(404, f"no job {panda_id}")
        return found[0]

    @app.get("/workers")
    def list_worker_reports() -> list[dict[str, Any]]:
        return store.worker_reports()

    @app.post("/jobs/{panda_id}/command")
    def queue_command(panda_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Operator API (not PanDA's): the command goes to the pilot with its next update's reply."""
        command = body.get("command")
        if command not in PILOT_COMMANDS:
            raise HTTPException(400, f"command must be one of {', '.join(PILOT_COMMANDS)}")
        if not store.queue_command(panda_id, command):
            raise HTTPException(404, f"no job {panda_id}")
        return {"PandaID": panda_id, "command": command, "queued": True}

    @app.post("/faults")
    def start_outage(body: dict[str, Any]) -> dict[str, Any]:
        """Test API (not PanDA's): answer PanDA calls with an HTTP error for a while (server_faults.py)."""
        try:
            return faults.start(body)
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None

    @app.delete("/faults")
    def end_outage() -> dict[str, Any]:
        faults.stop()
        return {"errors_answered": faults.log}

    @app.get("/faults")
    def outage_log() -> dict[str, Any]:
        return {"errors_answered": faults.log}

    @app.get("/jobs/{panda_id}/ranges")
    def get_ranges(panda_id: int) -> JSONResponse:
        ranges = store.ranges(panda_id)
        if ranges is None:
            raise HTTPException(404, f"no job {panda_id}")
        return JSONResponse(ranges)

    return app


PILOT_COMMANDS = ("tobekilled", "softkill", "debug", "debugoff")


def default_db_path(jobs_dir: Path) -> Path:
    """``<jobs_dir>/server.sqlite``, the updates beside the jobs they are about (never the jobs dir's
    parent, which may be anyone's); a temporary file where the jobs dir cannot be written."""
    jobs = Path(jobs_dir).resolve()
    with contextlib.suppress(OSError):
        jobs.mkdir(parents=True, exist_ok=True)
    if os.access(jobs, os.W_OK):
        return jobs / "server.sqlite"
    fd, name = tempfile.mkstemp(prefix="nodepilot-server-", suffix=".sqlite")
    os.close(fd)
    log.warning("the jobs dir %s cannot be written: updates kept in %s (give --db)", jobs, name)
    return Path(name)


class ListenError(Exception):
    """The server's address cannot be bound (in use, not this host's, not allowed)."""


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it every reply
    # after the first on a kept-alive connection waits ~40 ms (uvicorn writes headers and body apart)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _uvicorn_config(app: FastAPI, tls: TlsSettings | None) -> uvicorn.Config:
    if tls is None:
        return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    peers: dict[tuple[str, int], dict[str, Any]] = {}
    config = uvicorn.Config(AuthMiddleware(app, peers, tls.tokens), log_level="warning", access_log=False,
                            lifespan="off")
    config.load()
    protocol = recording_peer_certificates(config.http_protocol_class, peers)
    if tls.require_cert:  # TLS done by the protocol, so that a client without certificate gets the alert
        config.ssl = None
        config.http_protocol_class = terminating_tls(protocol, tls.ssl_context())  # type: ignore[assignment]
    else:
        config.ssl = tls.ssl_context()
        config.http_protocol_class = protocol
    return config


def run_server(jobs_dir: Path, host: str = "127.0.0.1", port: int = 0, db_path: Path | None = None,
               port_file: Path | None = None, *, tls: bool = False, cert: Path | None = None,
               key: Path | None = None, ca: Path | None = None, tokens: Path | None = None,
               require_cert: bool = False, legacy_api: bool = True, event_update_500: bool = False) -> None:
    """Serve until interrupted. The socket is bound and listening before the port is announced,
    so whoever reads the port (stdout or ``port_file``) can connect at once. With ``tls``: HTTPS with
    ``cert``/``key``; a client must present a certificate signed by ``ca`` or a token in ``tokens``
    (``require_cert``: a certificate, demanded in the TLS handshake). ``legacy_api=False``: no
    legacy dialect (see ``create_app``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: must be between 0 (a free port) and 65535")
    settings = None
    if tls:
        if cert is None or key is None:
            raise ValueError("TLS needs the server's certificate and key (--cert, --key)")
        settings = TlsSettings(Path(cert), Path(key), Path(ca) if ca else None, Path(tokens) if tokens else None,
                               require_cert=require_cert)
        settings.ssl_context()  # a certificate, key or CA that cannot be loaded: said now, before anything else
    elif require_cert:
        raise ValueError("--require-cert needs --tls")
    sock = _listen(host, port)
    try:
        db_path = Path(db_path) if db_path else default_db_path(Path(jobs_dir))
        config = _uvicorn_config(create_app(Path(jobs_dir), db_path, legacy_api=legacy_api,
                                            event_update_500=event_update_500), settings)
    except BaseException:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if sock.family == socket.AF_INET6 else host
    log.info("serving the jobs in %s; updates kept in %s", Path(jobs_dir).resolve(), db_path)
    print(f"nodepilot serve: listening on {'https' if tls else 'http'}://{shown_host}:{bound_port}", flush=True)
    if port_file is not None:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(f"{bound_port}\n")
        tmp.replace(port_file)
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
