"""What a running pilot holds: its own process and every service it forks carry none of the command line's or
the queue reading's libraries (typer's option validators, pydantic, FastAPI), also when the queue data needs
pydantic's models, each service is named for ``ps``, the same process id runs from launch to exit (the
command line and the queue data are read by a child that is gone: nodepilot/entry.py), and services run only
while a step needs them (nodepilot/demand.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from nodepilot import exitcodes
from tests.e2e.conftest import NODEPILOT, add_jobs, final_update, kill_if_running
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until


def _holds_pydantic(pid: int) -> bool:
    """Whether a process loaded pydantic (its compiled core is mapped): FastAPI and typer's option validators
    import it too, so a process without it holds none of the three."""
    return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("mode", [(), ("--in-process",), ("--in-process", "--queuedata", "own.json")],
                         ids=["processes", "in-process", "in-process-queue-file"])
def test_a_running_pilot_holds_only_what_it_runs(site: Path, job_server, mode: tuple[str, ...]):
    add_jobs(site, sleep_job(7501, 4))
    work = site / "work"
    (site / "own.json").write_text(json.dumps({"corecount": 1}))  # our own settings: checked by pydantic models
    mode = tuple(str(site / arg) if arg == "own.json" else arg for arg in mode)
    pilot = subprocess.Popen([*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url,
                              "--workdir", str(work), "--se-dir", str(site / "se"), *mode],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (work / "PanDA_Pilot-7501" / "t_start").exists(), 60, "the payload's start")
        launcher = psutil.Process(pilot.pid)  # the same process id: the command became the pilot
        services = {p.name(): p.pid for p in launcher.children() if p.name().startswith("np-")}
        if mode:
            assert not services
        else:
            # while the payload runs: no stager (it comes for the log), no event-service client (not an ES job)
            assert set(services) == {"np-monitor", "np-runner"}
        assert not [pid for pid in (pilot.pid, *services.values()) if _holds_pydantic(pid)]
        others = [p for p in launcher.children() if p.pid not in services.values() and "python" in p.name()]
        assert not others, [p.cmdline() for p in others]  # the command line's reader is gone
        _out, err = pilot.communicate(timeout=120)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == exitcodes.OK, err[-3000:]
    assert final_update(job_server.jobs()[7501])["job_status"] == "finished"
