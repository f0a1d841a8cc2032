"""``nodepilot start --in-process``: the four services as tasks of one process, the demo jobs end to end."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from nodepilot.config import SERVICES
from nodepilot.http import uds_client
from tests.e2e.conftest import EXAMPLES, NODEPILOT, add_jobs, final_update
from tests.e2e.test_signals_and_healing import start_pilot
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until


def healthy_pids(run_dir: Path) -> dict[str, int]:
    pids = {}
    for name in SERVICES:
        sock = run_dir / f"{name}.sock"
        if sock.exists():
            try:
                with uds_client(sock, timeout=2) as client:
                    pids[name] = client.get("/healthz").json()["pid"]
            except Exception:  # not serving yet
                pass
    return pids


def test_demo_jobs_in_one_process(site, job_server):
    add_jobs(site, sleep_job(1000, 3))  # first: long enough to look at the services
    add_jobs(site, *sorted((EXAMPLES / "jobs").glob("*.json")))
    run_dir = Path(tempfile.mkdtemp(prefix="np-ip-"))
    pilot = start_pilot(site, job_server.url, "--in-process", "--run-dir", str(run_dir))
    try:
        pids: dict[str, int] = {}

        def all_serving() -> bool:
            pids.update(healthy_pids(run_dir))
            return len(pids) == len(SERVICES)

        wait_until(all_serving, 15, "the four services healthy")
        err, _ = pilot.communicate(timeout=60)
    finally:
        if pilot.poll() is None:
            pilot.kill()
    assert set(pids.values()) == {pilot.pid}, pids  # one process serves the four APIs
    assert pilot.returncode == 0, err[-3000:]
    jobs = job_server.jobs()
    assert final_update(jobs[1000])["job_status"] == "finished"
    assert final_update(jobs[1001])["job_status"] == "finished"
    merged = final_update(jobs[1002])
    assert merged["job_status"] == "finished" and merged["pilot_error_code"] == 0
    failing = final_update(jobs[1003])
    assert failing["job_status"] == "failed" and failing["pilot_error_code"] == 1305
    assert final_update(jobs[1004])["job_status"] == "failed"  # the broken definition
    assert not list(run_dir.glob("*.sock"))  # every socket removed at the end


def test_bad_options_and_an_unreachable_front_end_are_clear_errors(site):
    common = ["start", "--queue", "LOCAL_TEST", "--workdir", str(site / "work"), "--se-dir", str(site / "se")]
    slots = subprocess.run([*NODEPILOT, *common, "--server", "http://127.0.0.1:9", "--slots", "many"],
                           capture_output=True, text=True, timeout=30)
    assert slots.returncode == 2 and "--slots must be 'auto' or a positive number" in slots.stderr
    relay = subprocess.run([*NODEPILOT, *common, "--in-process", "--api", "relay", "--redis-url",
                            f"unix://{site}/no-such.sock?db=0"], capture_output=True, text=True, timeout=30)
    assert relay.returncode == 4 and "cannot start" in relay.stderr, relay.stderr[-2000:]
