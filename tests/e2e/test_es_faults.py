"""Event-service jobs through the whole pilot when things break: the eventclient SIGKILLed mid-job,
outputs that cannot be staged out. Checked against the job server's ledger."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import redis

from nodepilot.errors import ErrorCode
from nodepilot.http import uds_client
from services.stager.paths import deterministic_path
from tests.e2e.conftest import add_jobs, final_update, kill_if_running, run_pilot
from tests.e2e.test_event_service import SCOPE_OUT, assert_settled_once, es_job, ledger, ranges
from tests.e2e.test_signals_and_healing import start_pilot
from tests.waiting import wait_until as wait_for


def kill_between_calls(pid: int, server, run_dir, panda_id: int, attempts: int = 100) -> None:
    """SIGKILL the eventclient mid-job, but at a moment none of its calls to the server is half done:
    PanDA's protocol has no way to learn what became of such a call (ranges the server handed out
    while the reply was on its way, a report taken while its answer was) and this test checks that
    the eventclient loses and repeats nothing on its own side (README.md, "A killed eventclient").
    Frozen with SIGSTOP, its Redis state is compared with the server's ledger; SIGKILL if they agree."""
    r = redis.Redis.from_url(json.loads((run_dir / "pilot.json").read_text())["redis_url"], decode_responses=True)
    try:
        for _ in range(attempts):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.1)  # requests already sent reach the server meanwhile
            held = {rid: json.loads(text) for rid, text in r.hgetall(f"eventclient:job:{panda_id}:ranges").items()}
            items = ledger(server, panda_id)
            handed_out = {item["eventRangeID"] for item in items if item["attempts"]}
            settled = {item["eventRangeID"] for item in items if item["updates"]}
            if set(held) == handed_out and {rid for rid, rec in held.items() if rec["sent"]} == settled:
                os.kill(pid, signal.SIGKILL)
                return
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
    finally:
        r.close()
    raise AssertionError(f"no moment without a call to the server in flight in {attempts} tries")



def test_sigkilled_eventclient_is_restarted_and_every_range_settles_once(site, job_server):
    n = 40
    add_jobs(site, {**es_job(6010, "--n 2 --sleep 0.05"), "_event_ranges": ranges(n)})
    run_dir = site / "run"
    pilot = start_pilot(site, job_server.url, "--run-dir", str(run_dir))
    try:
        def reported() -> int:
            if 6010 not in job_server.jobs():
                return 0
            return sum(item["status"] != "running" for item in ledger(job_server, 6010) if item["updates"])

        wait_for(lambda: reported() >= 8, 30, "a first report at the server")  # mid-job
        with uds_client(run_dir / "eventclient.sock") as client:
            pid = client.get("/healthz").json()["pid"]
        assert pid in {c.pid for c in psutil.Process(pilot.pid).children()}
        kill_between_calls(pid, job_server, run_dir, 6010)
        at_kill = reported()
        output, _ = pilot.communicate(timeout=90)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, output[-3000:]
    assert at_kill < n / 2, "the job was nearly over before the kill"
    assert "eventclient died" in output and "restarting" in output
    update = final_update(job_server.jobs()[6010])
    assert update["job_status"] == "finished" and not update.get("pilot_error_code"), update
    settled = assert_settled_once(job_server, 6010, site / "se")  # none lost, none reported twice
    assert len(settled["finished"]) == n and not settled.get("failed"), settled.get("failed")
    assert update["n_events"] == 10 * n
    assert not list((site / "work" / "PanDA_Pilot-6010").glob("out_*"))


def test_outputs_that_cannot_be_staged_out_fail_their_ranges(site, job_server):
    n, blocked = 12, (2, 5)
    for i in blocked:  # a directory where these outputs must go
        (site / "se" / deterministic_path(SCOPE_OUT, f"out_70-{i}-1-{i}-1.dat") / "x").mkdir(parents=True)
    add_jobs(site, {**es_job(6011, "--n 2"), "_event_ranges": ranges(n)})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6011])
    # as documented (services/eventclient/README.md): the job finishes while any range did
    assert update["job_status"] == "finished" and not update.get("pilot_error_code"), update
    assert update["n_events"] == 10 * (n - len(blocked))
    settled = assert_settled_once(job_server, 6011, site / "se")
    for item in ledger(job_server, 6011):
        i = int(item["eventRangeID"].split("-")[1])
        assert item["attempts"] == 1, item  # (the pilot had all the ranges before the first failure)
        if i in blocked:
            assert (item["status"], item["errorCode"]) == ("failed", ErrorCode.STAGEOUT_FAILED), item
        else:
            assert item["status"] == "finished", item
    assert len(settled["finished"]) == n - len(blocked) and len(settled["failed"]) == len(blocked)
    left = sorted(p.name for p in (site / "work" / "PanDA_Pilot-6011").glob("out_*"))
    assert left == [f"out_70-{i}-1-{i}-1.dat" for i in blocked]  # only those not staged (the log tarball has them)
