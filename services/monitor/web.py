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

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import BaseRoute

from nodepilot.reports import read_limited
from nodepilot.service import QuietServer
from nodepilot.usage import USAGE_FILE
from nodepilot.webapi import api_app, json_route, number, server_config
from services.monitor.metrics import jobs

if TYPE_CHECKING:
    from services.monitor.pilot import Pilot

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "style.css": "style.css"}
MAX_POINTS = 1000  # a long job's series is thinned to this many samples
MAX_USAGE_BYTES = 64 * 1024 * 1024


def routes(pilot: Pilot) -> list[BaseRoute]:
    """The page and its data (read-only), on the monitor's socket and on the optional TCP port."""

    async def ui_root(_request: Request) -> RedirectResponse:
        return RedirectResponse("/ui/")

    async def page(request: Request) -> FileResponse:
        name = request.path_params.get("name", "")
        if name not in PAGES:
            raise HTTPException(404, "no such page")
        return FileResponse(STATIC / PAGES[name], headers={"Cache-Control": "no-cache"})

    async def job_list(_request: Request) -> dict[str, Any]:
        config = pilot.config
        return {"queue": config.queue, "node": config.node, "current": pilot.current.job.panda_id
                if pilot.current else None, "jobs": jobs(pilot)}

    async def usage(request: Request) -> dict[str, Any]:
        job_id = number(request.path_params["job_id"], "job_id", int)
        if not any(j.get("panda_id") == job_id for j in jobs(pilot)):
            raise HTTPException(404, f"job {job_id} is not one of this pilot's")
        path = Path(pilot.config.work_dir).resolve() / f"PanDA_Pilot-{job_id}" / USAGE_FILE
        return await asyncio.to_thread(read_series, path)

    return [json_route("/ui", ui_root), json_route("/ui/", page), json_route("/ui/{name}", page),
            json_route("/api/jobs", job_list), json_route("/api/jobs/{job_id}/usage", usage)]


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


def web_app(pilot: Pilot) -> Starlette:
    """The page and its data alone, for the TCP port."""

    async def root(_request: Request) -> RedirectResponse:
        return RedirectResponse("/ui/")

    return api_app([json_route("/", root), *routes(pilot)])


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
    server = QuietServer(server_config(web_app(pilot), timeout_graceful_shutdown=1))
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
