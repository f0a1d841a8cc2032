"""What is checked before any job is asked for (docs/queues.md): a failure is one line and exit code 2
(the queue closed: exit code 6), and the server never hears of this pilot."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nodepilot import exitcodes
from nodepilot.plugins import plugin_names
from nodepilot.queue import activities, roles
from nodepilot.rundir import check_work_dir

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig
    from nodepilot.queue.model import QueueData

MOVER_ENTRY_POINTS = "nodepilot.movers"
# the activities every job needs (an event-service job's es_events falls back to write_lan)
NEEDED = (roles.READ, roles.WRITE, roles.LOG)


class PreflightError(Exception):
    def __init__(self, message: str, code: int = exitcodes.USAGE) -> None:
        super().__init__(message)
        self.code = code


def server_url_problem(url: str) -> str:
    """"" when ``url`` is a usable server base URL, else what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"server URL {url!r}: expected http:// or https://"
    try:
        port = parts.port
    except ValueError:
        return f"server URL {url!r}: the port is not a number from 1 to 65535"
    if not parts.hostname:
        return f"server URL {url!r}: no host"
    if port == 0:
        return f"server URL {url!r}: the port is not a number from 1 to 65535"
    return ""


def check_queue_open(queue: QueueData) -> None:
    if queue.state and queue.state.upper() != "ACTIVE":
        raise PreflightError(f"queue {queue.name} is not ACTIVE (state {queue.state}): no job asked for",
                             exitcodes.QUEUE_CLOSED)
    if queue.status.lower() == "offline":
        raise PreflightError(f"queue {queue.name} is offline (status offline): no job asked for",
                             exitcodes.QUEUE_CLOSED)


def check_workdir(work_dir: str, need_mb: int) -> None:
    work = Path(work_dir)
    try:
        check_work_dir(work)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    free_mb = shutil.disk_usage(work).free // (1 << 20)
    if need_mb and free_mb < need_mb:
        raise PreflightError(f"work dir {work}: {free_mb} MB free, the queue's maxwdir asks for {need_mb} MB")


def installed_movers() -> set[str]:
    return plugin_names(MOVER_ENTRY_POINTS, {"posix": "", "rucio": ""})  # the stager's built-in movers


def check_storage(queue: QueueData, where: str) -> None:
    """Every activity a job needs has an endpoint, and a mover installed for each of its endpoints."""
    movers = installed_movers()
    for activity in NEEDED:
        endpoints = queue.endpoints_for(activity)
        if not endpoints:
            raise PreflightError(f"{where}: no storage endpoint for {activity} (looked for "
                                 f"{', '.join(roles.lookup_order(activity))})")
        for endpoint in endpoints:
            scheme = activities.scheme_of(endpoint.url)
            mover = next((m for m, schemes in activities.MOVER_SCHEMES.items() if scheme in schemes), "")
            if mover not in movers:
                raise PreflightError(f"{where}: {activity} endpoint {endpoint.name} ({endpoint.url}): no mover "
                                     f"installed for {scheme or 'scheme-less'} URLs")


def run_preflight(config: PilotConfig) -> None:
    """Raises PreflightError; the queue data is already loaded and checked against the schema."""
    if config.server:
        problem = server_url_problem(config.server)
        if problem:
            raise PreflightError(problem)
    queue = config.queuedata
    where = config.queuedata_url or config.queuedata_file or config.queuedata_dump or "queue data"
    check_queue_open(queue)
    check_workdir(config.work_dir, queue.maxwdir_mb)
    check_storage(queue, where)
