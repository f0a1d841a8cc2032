"""The payload's HTTP API: ``<workdir>/events.sock``, served by uvicorn in the eventclient's process.
The socket lives in the job's work dir so a sandboxed payload reaches it and nothing else of the
pilot. Routes (README.md): ``POST /ranges?n=N[&request=ID]``, ``POST /ranges/{id}/done``,
``POST /ranges/{id}/failed``, ``GET /ranges``, ``POST /softkill``.

A bare ASGI app rather than FastAPI: these calls are made once or twice per event range, and
FastAPI's routing, dependency and serialisation machinery cost more than the work behind them.
Errors answer as FastAPI would: ``{"detail": ...}`` with 400/404/409/503 from the session, 422
for a malformed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from nodepilot.service import QuietServer
from nodepilot.webapi import server_config
from services.eventclient.payload import (
    MAX_RANGES_PER_CALL,
    DoneBody,
    FailedBody,
    Invalid,
    PayloadBackend,
    Refused,
    parse_json,
    request_id,
)

SOCKET_NAME = "events.sock"
SUN_PATH_MAX = 100  # bytes a Unix socket path may safely have (sun_path is 108 with its NUL)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
MAX_BODY = 1 << 20

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class PayloadApp:
    """The routes of the payload's API over a ``PayloadBackend`` (the job's session)."""

    def __init__(self, backend: PayloadBackend) -> None:
        self.backend = backend

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            body = await _body(receive)
            answer = await self.route(scope["method"], scope["path"], scope.get("query_string", b""), body)
            status = 200
        except Refused as exc:
            status, answer = exc.status, {"detail": exc.detail}
        except Invalid as exc:
            status, answer = 422, {"detail": exc.detail()}
        data = json.dumps(answer, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})

    async def route(self, method: str, path: str, query: bytes, body: bytes) -> Any:
        parts = path.strip("/").split("/")
        if parts == ["ranges"]:
            if method == "GET":
                return self.backend.states()
            _allow(method, "POST")
            params = parse_qs(query.decode("latin-1"))
            return {"ranges": await self.backend.take(_count(params), _request(params))}
        if len(parts) == 3 and parts[0] == "ranges" and parts[2] in ("done", "failed"):
            _allow(method, "POST")
            if parts[2] == "done":
                return await self.backend.done(parts[1], DoneBody.parse(parse_json(body or b"null")))
            given = body.strip() not in (b"", b"null")  # the body is optional
            return await self.backend.fail(parts[1], FailedBody.parse(parse_json(body)) if given else FailedBody())
        if parts == ["softkill"]:
            _allow(method, "POST")
            return await self.backend.softkill()
        raise Refused(404, "Not Found")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise Refused(405, "Method Not Allowed")


def _count(params: dict[str, list[str]]) -> int:
    values = params.get("n", ["1"])
    try:
        n = int(values[-1])
    except ValueError:
        raise Refused(422, f"n must be an integer, not {values[-1][:50]!r}") from None
    if not 1 <= n <= MAX_RANGES_PER_CALL:
        raise Refused(422, f"n must be from 1 to {MAX_RANGES_PER_CALL}, not {n}")
    return n


def _request(params: dict[str, list[str]]) -> str:
    try:
        return request_id(params.get("request", [""])[-1])
    except Invalid as exc:
        raise Refused(422, f"request {exc.problem}") from None


async def _body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, f"request body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def bind_unix(path: Path) -> socket.socket:
    """A socket bound at ``path`` (a stale one is replaced), for any user who can reach the work dir
    (a sandboxed payload may run as another one). A path too long for sun_path is bound through
    /proc/self/fd/<dir fd>/<name> (Linux): a deep work dir still works."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
            sock.bind(str(path))
        else:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
            finally:
                os.close(dir_fd)
        # like uvicorn's own sockets: who may connect is decided by the work dir's permissions
        path.chmod(0o666)
    except BaseException:
        sock.close()
        raise
    return sock


class PayloadServer:
    """uvicorn for one job's payload API, as a task of the eventclient's event loop."""

    def __init__(self, app: PayloadApp, path: Path) -> None:
        self.app, self.path = app, path
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        sock = bind_unix(self.path)
        server = QuietServer(server_config(self.app, access_log=False, timeout_graceful_shutdown=2))
        self._server, self._task = server, asyncio.create_task(server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not server.started:  # a few turns of the loop: create_server on a bound socket
            if self._task.done() or loop.time() > deadline:
                await self.close()
                raise RuntimeError(f"the payload API did not start on {self.path}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.request_exit()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT_S)
            if not self._task.done():
                self._task.cancel()
        self._server = self._task = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
