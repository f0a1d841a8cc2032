"""The PanDA server answers 503 (an HTML page from its proxy) for a while, then recovers: every
update the pilot made is delivered, in order, none lost. The whole pilot against `nodepilot serve`."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.e2e.conftest import add_jobs, final_update, kill_if_running
from tests.e2e.test_signals_and_healing import start_pilot

ORDER = ["starting", "running", "transferring", "finished"]


def wait_for_state(job_server, panda_id: int, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        job = job_server.jobs().get(panda_id)
        if job and any((u.get("job_status") or u.get("state")) == state for u in job["updates"]):
            return
        assert time.monotonic() < deadline, f"job {panda_id} never reported {state}"
        time.sleep(0.05)


@pytest.mark.parametrize("api, method", [("v1", "update_job"), ("legacy", "updateJob")])
def test_updates_survive_an_outage_in_order(site, job_server, api, method):
    panda_id = 7300 if api == "v1" else 7301
    add_jobs(site, {"PandaID": panda_id, "attemptNr": 1, "transformation": "sleep", "jobPars": "2",
                    "outFiles": f"l{panda_id}.tgz", "logFile": f"l{panda_id}.tgz", "scopeLog": "demo.log"})
    pilot = start_pilot(site, job_server.url, "--api", api, "--max-jobs", "1")
    try:
        wait_for_state(job_server, panda_id, "running")
        t0 = time.monotonic()
        outage = {"status": 503, "seconds": 5, "retry_after": 1, "methods": [method]}
        httpx.post(f"{job_server.url}/faults", json=outage, timeout=10).raise_for_status()
        out, _ = pilot.communicate(timeout=90)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, out[-3000:]
    errors = httpx.get(f"{job_server.url}/faults", timeout=10).json()["errors_answered"]
    assert errors and all(e["method"] == method and e["status"] == 503 for e in errors)
    job = job_server.jobs()[panda_id]
    states = [u.get("job_status") or u.get("state") for u in job["updates"]]
    assert states[-1] == "finished" and "transferring" in states, states
    ranks = [ORDER.index(s) for s in states]
    assert ranks == sorted(ranks), f"updates reordered: {states}"
    update = final_update(job)
    assert update["job_status"] == "finished" and f"l{panda_id}.tgz" in json.loads(update["job_output_report"])
    delivered_at = max(u["time"] for u in job["updates"])
    assert delivered_at >= errors[-1]["time"]  # the final update went through after the outage
    assert time.monotonic() - t0 < 60
