"""The payload's API: a small HTTP app on ``<workdir>/events.sock``, served in the eventclient's
process. The socket lives in the job's work dir so a sandboxed payload reaches it and nothing
else of the pilot. Routes (README.md): ``POST /ranges?n=N``, ``POST /ranges/{id}/done``,
``POST /ranges/{id}/failed``, ``GET /ranges``, ``POST /softkill``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from nodepilot.service import QuietServer

MAX_RANGES_PER_CALL = 1000
SOCKET_NAME = "events.sock"
SUN_PATH_MAX = 100  # bytes a Unix socket path may safely have (sun_path is 108 with its NUL)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class Refused(Exception):
    """A payload request that cannot be served as asked: HTTP ``status`` with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class DoneBody(BaseModel):
    output: str = Field(description="the range's output file, a name in the job's work dir")
    cpu_s: float | None = None
    wall_s: float | None = None
    n_events: int | None = None


class FailedBody(BaseModel):
    error_code: int | None = None
    diag: str | None = None


class PayloadBackend(Protocol):
    async def take(self, n: int) -> list[dict[str, Any]]: ...
    async def done(self, range_id: str, body: DoneBody) -> dict[str, Any]: ...
    async def fail(self, range_id: str, body: FailedBody) -> dict[str, Any]: ...
    def states(self) -> dict[str, Any]: ...
    async def softkill(self) -> dict[str, Any]: ...


def build_app(backend: PayloadBackend) -> FastAPI:
    app = FastAPI(title="nodepilot event ranges", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.post("/ranges")
    async def take(n: int = Query(1, ge=1, le=MAX_RANGES_PER_CALL)) -> dict[str, Any]:
        return {"ranges": await backend.take(n)}

    @app.get("/ranges")
    async def states() -> dict[str, Any]:
        return backend.states()

    @app.post("/ranges/{range_id}/done")
    async def done(range_id: str, body: DoneBody) -> dict[str, Any]:
        return await backend.done(range_id, body)

    @app.post("/ranges/{range_id}/failed")
    async def failed(range_id: str, body: FailedBody | None = None) -> dict[str, Any]:
        return await backend.fail(range_id, body or FailedBody())

    @app.post("/softkill")
    async def softkill() -> dict[str, Any]:
        return await backend.softkill()

    return app


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

    def __init__(self, app: FastAPI, path: Path) -> None:
        self.app, self.path = app, path
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        sock = bind_unix(self.path)
        server = QuietServer(uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                            timeout_graceful_shutdown=2))
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
