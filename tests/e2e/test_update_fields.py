"""What the server and its monitoring read, as ``nodepilot serve`` records it: running heartbeats
carry the CPU and memory figures measured so far; the final update has meta_data (the pilot's own
minimal report when the payload wrote none) and describes the CPU."""

from __future__ import annotations

import json
import platform
import re

import httpx

from tests.e2e.conftest import add_jobs, final_update, kill_if_running, write_queuedata
from tests.e2e.test_signals_and_healing import start_pilot, wait_for_file
from tests.waiting import wait_until


def test_heartbeats_carry_the_figures_so_far_and_the_final_update_has_meta_data(site, job_server):
    add_jobs(site, {
        "PandaID": 5301, "attemptNr": 1, "transformation": "bash",  # busy until told to stop: CPU to measure
        "jobPars": "-c 'touch started; while [ ! -e go ]; do i=$((i+1)); done'",
        "outFiles": "l5301.tgz", "logFile": "l5301.tgz", "scopeLog": "demo.log",
    })
    queuedata = write_queuedata(site, watchdog={"sample_interval_s": 0.2})
    pilot = start_pilot(site, job_server.url, "--heartbeat", "0.3", "--queuedata", queuedata)
    workdir = site / "work" / "PanDA_Pilot-5301"
    try:
        wait_for_file(workdir / "started")
        beats = wait_until(lambda: [u for u in job_server.jobs()[5301]["updates"]
                                    if u.get("job_status") == "running" and u.get("cpu_consumption_time", 0) >= 1],
                           30, "a running heartbeat with a second of CPU")
        (workdir / "go").touch()
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, output[-3000:]
    beat = beats[0]
    assert beat["max_rss"] > 0 and beat["max_pss"] > 0 and "avg_rss" in beat, beat
    assert re.fullmatch(r"s\+.+\+[A-Z0-9_]+", beat["cpu_consumption_unit"]), beat
    final = final_update(job_server.jobs()[5301])
    assert final["job_status"] == "finished" and final["cpu_consumption_time"] >= beat["cpu_consumption_time"]
    assert json.loads(final["meta_data"]) == {"exitCode": 0, "exitMsg": "OK", "pilot": "nodepilot"}
    if platform.machine() == "x86_64":  # also in the worker-node inventory
        assert re.fullmatch(r"x86-64-v[1-4]", final["cpu_architecture_level"])
        nodes = httpx.get(f"{job_server.url}/workers", timeout=10).json()
        assert [n.get("cpu_architecture_level") for n in nodes if "cpu_model" in n] == [
            final["cpu_architecture_level"]], nodes
