"""The monitor's read-only web page: the pilot's jobs, each job's timing breakdown, and its payload's
memory and CPU over time (the runner's ``memory_monitor_output.json``).

Served on the monitor's socket (``/ui/``, ``/api/...``) and, with ``--web-port``, on 127.0.0.1 by a
second server that has only these read-only routes (not the monitor's control API). A static
page (services/monitor/static), no build step, no external resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from nodepilot.reports import read_limited
from nodepilot.service import QuietServer
from nodepilot.usage import USAGE_FILE
from services.monitor.metrics import jobs

if TYPE_CHECKING:
    from services.monitor.pilot import Pilot

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}
MAX_POINTS = 1000  # a long job's series is thinned to this many samples
MAX_USAGE_BYTES = 64 * 1024 * 1024


def router(pilot: Pilot) -> APIRouter:
    routes = APIRouter()

    @routes.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @routes.get("/ui/", include_in_schema=False)
    async def index() -> FileResponse:
        return await page("")

    @routes.get("/ui/{name}", include_in_schema=False)
    async def page(name: str) -> FileResponse:
        if name not in PAGES:
            raise HTTPException(404, "no such page")
        return FileResponse(STATIC / PAGES[name], headers={"Cache-Control": "no-cache"})

    @routes.get("/api/jobs")
    async def job_list() -> dict[str, Any]:
        config = pilot.config
        return {"queue": config.queue, "node": config.node, "current": pilot.current.job.panda_id
                if pilot.current else None, "jobs": jobs(pilot)}

    @routes.get("/api/jobs/{job_id}/usage")
    async def usage(job_id: int) -> dict[str, Any]:
        if not any(j.get("panda_id") == job_id for j in jobs(pilot)):
            raise HTTPException(404, f"job {job_id} is not one of this pilot's")
        path = Path(pilot.config.work_dir).resolve() / f"PanDA_Pilot-{job_id}" / USAGE_FILE
        return await asyncio.to_thread(read_series, path)

    return routes


def read_series(path: Path) -> dict[str, Any]:
    """The resource samples of a job ({"samples": []} before the first), thinned to MAX_POINTS."""
    text, note = read_limited(path, MAX_USAGE_BYTES)
    if text is None:
        return {"samples": [], "note": note}
    try:
        samples = json.loads(text).get("samples") or []
    except (ValueError, AttributeError):
        return {"samples": [], "note": f"{path.name} is not readable JSON"}
    if not isinstance(samples, list):
        return {"samples": [], "note": f"{path.name} has no list of samples"}
    step = max(1, -(-len(samples) // MAX_POINTS))
    thinned = samples[::step]
    if samples and thinned[-1] is not samples[-1]:
        thinned.append(samples[-1])
    return {"samples": thinned, "total": len(samples)}


def web_app(pilot: Pilot) -> FastAPI:
    """The page and its data alone, for the TCP port."""
    app = FastAPI(title="nodepilot monitor (read-only)", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router(pilot))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app


async def serve_tcp(pilot: Pilot, port: int) -> None:
    """Serve the read-only page on 127.0.0.1:``port`` until cancelled; a port in use is logged, not fatal."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        log.error("web page not served on 127.0.0.1:%s: %s", port, exc)
        return
    server = QuietServer(uvicorn.Config(web_app(pilot), log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=1))
    log.info("web page on http://127.0.0.1:%s/ui/", port)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.request_exit()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 3)
        raise
    finally:
        sock.close()
