"""``nodepilot status``: a live terminal view of a running pilot, read from its services' sockets.

Each frame reads ``GET /status`` of every service (monitor: jobs, current step, watchdog checks;
runner: payloads; stager: transfers; eventclient: event ranges) and draws them with rich. An
operator's tool: it re-reads once a second, which costs each service one small request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nodepilot.config import SERVICES
from nodepilot.demand import ON_DEMAND
from nodepilot.http import uds_client

Snapshot = dict[str, dict[str, Any] | None]  # service -> its /status (None: not reachable; left out: idle)
STEPS = ("stagein", "payload", "stageout", "stagelog")


def find_run_dir(work_dir: Path) -> Path | None:
    """The newest run directory under ``work_dir`` (or a short one in the temp dir) with a live monitor socket."""
    import tempfile

    candidates = [*work_dir.glob("run-*"), *Path(tempfile.gettempdir()).glob("nodepilot-*")]
    live = [d for d in candidates if (d / "monitor.sock").exists()]
    return max(live, key=lambda d: d.stat().st_mtime) if live else None


def fetch_one(sock: Path, timeout: float) -> dict[str, Any] | None:
    if not sock.exists():
        return None
    try:
        with uds_client(sock, timeout=timeout) as client:
            reply = client.get("/status")
            return reply.json() if reply.status_code == 200 else None
    except Exception:  # a service stopping or restarting: shown as not reachable
        return None


def fetch(run_dir: Path, services: Iterable[str] = SERVICES, timeout: float = 2.0) -> Snapshot:
    """Every service's status; a service started on demand that has no socket now is idle, and left out."""
    names = [name for name in services if name not in ON_DEMAND or (run_dir / f"{name}.sock").exists()]
    with ThreadPoolExecutor(len(names)) as pool:
        results = pool.map(lambda name: fetch_one(run_dir / f"{name}.sock", timeout), names)
        return dict(zip(names, results, strict=True))


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def jobs_table(monitor: dict[str, Any]) -> Table:
    table = Table(title="jobs", title_justify="left", expand=False)
    for column in ("PandaID", "state", "step", "pilot err", "exe err", "stage-in s", "payload s", "stage-out s",
                   "diag"):
        table.add_column(column, overflow="fold")
    rows = [*(monitor.get("jobs") or []), *running_jobs(monitor)]
    for job in rows:
        t = job.get("timings") or {}
        state = str(job.get("state") or "?")
        style = {"finished": "green", "failed": "red", "running": "cyan"}.get(state, "")
        table.add_row(str(job.get("panda_id") or "-"), Text(state, style=style), str(job.get("step") or ""),
                      str(job.get("pilot_error_code") or 0), str(job.get("exe_error_code") or 0),
                      _seconds(t.get("stagein")), _seconds(t.get("payload")), _seconds(t.get("stageout")),
                      str(job.get("pilot_error_diag") or "")[:60])
    return table


def transfers_table(stager: dict[str, Any]) -> Table:
    table = Table(title="transfers", title_justify="left")
    for column in ("PandaID", "file", "dir", "progress", "done", "size", "rate"):
        table.add_column(column)
    for t in stager.get("transfers") or []:
        size, done = t.get("size"), t.get("bytes_done") or 0
        bar = ProgressBar(total=size, completed=done, width=24) if size else ProgressBar(total=None, width=24)
        table.add_row(str(t.get("job_id")), str(t.get("lfn")), str(t.get("direction")), bar, human_bytes(done),
                      human_bytes(size), f"{human_bytes(t.get('rate_bytes_s') or 0)}/s")
    return table


def ranges_table(eventclient: dict[str, Any]) -> Table:
    table = Table(title="event ranges", title_justify="left")
    for column in ("PandaID", "ranges by state", "ranges/s", "softkill"):
        table.add_column(column)
    for job_id, job in (eventclient.get("jobs") or {}).items():
        counts = job.get("counts") or {}
        text = ", ".join(f"{state} {n}" for state, n in counts.items() if n)
        table.add_row(str(job_id), text or "-", str(job.get("ranges_per_s", "-")), "yes" if job.get("softkill") else "")
    return table


def running_jobs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """Every job running now (several with slots); older monitors only say which one is current."""
    running = list(monitor.get("running") or [])
    if not running and monitor.get("current_job") is not None:
        running = [{"panda_id": monitor["current_job"], "state": monitor.get("current_state"),
                    "step": monitor.get("current_step"), "checks": monitor.get("checks") or {}}]
    return running


def checks_table(monitor: dict[str, Any]) -> Table:
    table = Table(title="watchdog checks", title_justify="left")
    for column in ("PandaID", "check", "ok", "value", "diag"):
        table.add_column(column, overflow="fold")
    for job in running_jobs(monitor):
        for name, result in sorted((job.get("checks") or {}).items()):
            ok = result.get("ok")
            verdict = Text("ok" if ok else "FIRED", style="green" if ok else "bold red")
            table.add_row(str(job.get("panda_id")), name, verdict, str(result.get("value")),
                          str(result.get("diag") or result.get("error") or ""))
    return table


def payloads_table(runner: dict[str, Any]) -> Table:
    table = Table(title="payloads", title_justify="left")
    for column in ("PandaID", "pid", "running s", "killing"):
        table.add_column(column)
    for p in runner.get("payloads") or []:
        table.add_row(str(p.get("job_id")), str(p.get("pid")), _seconds(p.get("running_s")),
                      "yes" if p.get("killing") else "")
    return table


def render(snapshot: Snapshot, run_dir: Path) -> RenderableType:
    monitor = snapshot.get("monitor")
    up = [name for name, status in snapshot.items() if status is not None]
    down = [name for name, status in snapshot.items() if status is None]
    idle = [name for name in SERVICES if name not in snapshot]  # started when a job's step needs them
    head = Text.assemble(("nodepilot ", "bold"), str(run_dir), "  services up: ", (", ".join(up) or "none", "green"))
    if idle:
        head.append(f"  idle (started when needed): {', '.join(idle)}")
    if down:
        head.append(f"  not reachable: {', '.join(down)}", style="red")
    if monitor is not None:
        head.append(f"  uptime {monitor.get('uptime_s', 0):.0f} s  updates delivered "
                    f"{monitor.get('updates_delivered', 0)}")
    parts: list[RenderableType] = [head]
    if monitor is not None:
        parts.append(jobs_table(monitor))
    for name, table in (("runner", payloads_table), ("stager", transfers_table), ("eventclient", ranges_table)):
        if name in idle or snapshot.get(name):  # an idle service has nothing running: its table is empty
            parts.append(table(snapshot.get(name) or {}))
    if monitor is not None:
        parts.append(checks_table(monitor))
    return Group(*parts)


def show(run_dir: Path, once: bool, interval: float = 1.0, console: Console | None = None) -> int:
    """Draw the pilot in ``run_dir``: one frame (``once``), or live until it stops or Ctrl-C. Returns
    1 when no pilot answers there."""
    console = console or Console(width=None if os.isatty(1) else 160)
    snapshot = fetch(run_dir)
    if snapshot.get("monitor") is None:
        console.print(f"no running pilot answers in {run_dir} (no monitor socket, or it does not answer)")
        return 1
    if once:
        console.print(render(snapshot, run_dir))
        return 0
    from rich.live import Live

    with Live(render(snapshot, run_dir), console=console, refresh_per_second=4) as live:
        try:
            while snapshot.get("monitor") is not None:
                time.sleep(interval)  # an operator's view: a modest re-read rate, not the pilot's hot path
                snapshot = fetch(run_dir)
                live.update(render(snapshot, run_dir))
        except KeyboardInterrupt:
            pass
    console.print("the pilot has stopped" if snapshot.get("monitor") is None else "")
    return 0
