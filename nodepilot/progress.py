"""Progress of a pilot's jobs on the terminal (``nodepilot start`` / ``run``, ``make run``).

A thread of the launcher's process reads the monitor's and the stager's ``/status`` twice a
second and draws one progress line per job step (stage-in, payload, stage-out, log), with the
bytes moved when the stager knows the sizes. Only for a terminal: the CLI does not start it when
stdout is a file or a pipe, where the services' log lines say the same.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from nodepilot.status import fetch, human_bytes, running_jobs

PERIOD_S = 0.5
STEP_NAMES = {"setup": "setup", "stagein": "stage-in", "payload": "payload", "stageout": "stage-out",
              "stagelog": "log stage-out"}
TRANSFER_STEPS = {"stagein": "in", "stageout": "out", "stagelog": "out"}


class JobProgress:
    def __init__(self, run_dir: Path, console: Console | None = None) -> None:
        self.run_dir = run_dir
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
        self.tasks: dict[tuple[int, str], TaskID] = {}
        self.totals: dict[tuple[int, str], int] = {}  # bytes of a transfer step, once known
        self.active: dict[int, str] = {}  # job -> its step shown as running
        self.done: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nodepilot-progress", daemon=True)

    def start(self) -> None:
        self.progress.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:  # the last job's end: the monitor may be gone already, its table is not
            for job in json.loads((self.run_dir / "summary.json").read_text()):
                self._ended(job)
        except (OSError, ValueError):
            pass
        self.progress.stop()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):  # a display's refresh, not the pilot's work
            self.update(fetch(self.run_dir, ("monitor", "stager"), timeout=1.0))

    def update(self, snapshot: dict[str, Any]) -> None:
        monitor = snapshot.get("monitor")
        if monitor is None:
            return
        for job in monitor.get("jobs") or []:
            self._ended(job)
        for job in running_jobs(monitor):  # every job running now (several with slots)
            self._show(job.get("panda_id"), job.get("step"), snapshot)

    def _show(self, job_id: Any, step: Any, snapshot: dict[str, Any]) -> None:
        if job_id is None or step not in STEP_NAMES or job_id in self.done:
            return
        if self.active.get(job_id) != step:
            self._finish_step(job_id)
            self.active[job_id] = step
            self.tasks[(job_id, step)] = self.progress.add_task(f"job {job_id} {STEP_NAMES[step]}", total=None,
                                                                detail="")
        direction = TRANSFER_STEPS.get(step)
        if direction:
            mine = [t for t in (snapshot.get("stager") or {}).get("transfers") or []
                    if t.get("job_id") == job_id and t.get("direction") == direction]
            if mine and all(t.get("size") for t in mine):
                self.totals[(job_id, step)] = total = sum(t["size"] for t in mine)
                done = sum(t.get("bytes_done") or 0 for t in mine)
                rate = sum(t.get("rate_bytes_s") or 0 for t in mine)
                self.progress.update(self.tasks[(job_id, step)], total=total, completed=done,
                                     detail=f"{human_bytes(done)} / {human_bytes(total)}  {human_bytes(rate)}/s")

    def _finish_step(self, job_id: int) -> None:
        step = self.active.pop(job_id, None)
        if step is not None:
            total = self.totals.get((job_id, step)) or 1
            self.progress.update(self.tasks[(job_id, step)], total=total, completed=total)

    def _ended(self, job: dict[str, Any]) -> None:
        job_id = job.get("panda_id")
        if job_id is None or job_id in self.done:
            return
        self.done.add(job_id)
        self._finish_step(job_id)
        code = job.get("pilot_error_code") or 0
        state = str(job.get("state"))
        style = "green" if state == "finished" else "red"
        task = self.progress.add_task(f"job {job_id} [{style}]{state}[/]" + (f" (pilot error {code})" if code else ""),
                                      total=1, detail="")
        self.progress.update(task, completed=1)  # finished: no spinner
