"""The slot's time budget through the whole pilot: the payload is warned some time before the slot
ends (a file whose path is in NODEPILOT_TIME_WARNING; SIGUSR1 too when the job says it handles it),
then stopped; what it completed is staged out and the job says it is partial."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import add_jobs, final_update, run_pilot
from tests.e2e.test_hostile_payloads import queuedata

# on SIGUSR1 the payload finishes its first output; a well-behaved one then exits, a stubborn one sleeps on
PAYLOAD = """trap "echo done1 > out1.dat; echo $NODEPILOT_SLOT_END > warned; {after}" USR1
for i in $(seq 300); do sleep 0.1; done"""


# an ordinary payload: no handler (SIGUSR1 would kill it); it copies the warning file once it appears
ORDINARY = """echo done1 > out1.dat
for i in $(seq 300); do [ -e "$NODEPILOT_TIME_WARNING" ] && cp "$NODEPILOT_TIME_WARNING" seen.json; sleep 0.1; done"""


def budget_job(panda_id: int, after: str, payload: str = PAYLOAD, handles: str | None = "yes") -> dict:
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": "bash",
            "jobPars": f"-c '{payload.format(after=after)}'",
            **({"handlesTimeSignal": handles} if handles is not None else {}),
            "outFiles": f"out1.dat,out2.dat,l{panda_id}.tgz", "logFile": f"l{panda_id}.tgz",
            "scopeOut": "demo.out", "scopeLog": "demo.log"}


def run_with_budget(site, job_server, panda_id: int, after: str, **job: str | None) -> tuple[dict, float]:
    add_jobs(site, budget_job(panda_id, after, **job))
    t0 = time.monotonic()
    qd = queuedata(site, time_budget_warn_s=10, time_budget_stop_s=6)
    result = run_pilot(site, job_server.url, "--queuedata", qd, "--lifetime", "16", "--max-jobs", "1", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_update(job_server.jobs()[panda_id]), time.monotonic() - t0


def test_a_payload_that_ignores_the_warning_is_stopped_and_its_complete_outputs_staged(site, job_server):
    # a 16 s slot: the payload is warned 10 s before its end and stopped 6 s before
    update, elapsed = run_with_budget(site, job_server, 7400, ":")
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1213, update
    diag = update["pilot_error_diag"]
    assert "time budget" in diag and "partial result: 1 of 2 outputs" in diag, diag
    staged = json.loads(update["job_output_report"])
    assert "out1.dat" in staged and "out2.dat" not in staged and "l7400.tgz" in staged
    assert (site / "work" / "PanDA_Pilot-7400" / "warned").read_text().strip().isdigit()
    assert 9 < elapsed < 25, elapsed


def test_a_payload_that_wraps_up_on_the_warning_finishes(site, job_server):
    update, elapsed = run_with_budget(site, job_server, 7401, "echo done2 > out2.dat; exit 0")
    assert update["job_status"] == "finished" and update["pilot_error_code"] == 0, update.get("pilot_error_diag")
    staged = json.loads(update["job_output_report"])
    assert {"out1.dat", "out2.dat", "l7401.tgz"} <= set(staged)
    assert 5 < elapsed < 20, elapsed


def test_an_ordinary_payload_gets_no_signal_but_the_file_and_its_outputs_are_staged(site, job_server):
    """Not declared to handle SIGUSR1 (whose default action kills): warned by the file only, stopped
    at the stop time like any payload, its complete output staged (not killed by the warning: 1305)."""
    update, _ = run_with_budget(site, job_server, 7402, "", payload=ORDINARY, handles=None)
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1213, update
    assert "partial result: 1 of 2 outputs" in update["pilot_error_diag"], update["pilot_error_diag"]
    staged = json.loads(update["job_output_report"])
    assert "out1.dat" in staged and "l7402.tgz" in staged
    seen = json.loads((site / "work" / "PanDA_Pilot-7402" / "seen.json").read_text())
    assert seen["stop_at"] < seen["slot_end"] and 0 < seen["seconds_to_stop"] <= 4, seen


def test_a_launch_time_inherited_from_the_caller_is_not_the_pilots(site, job_server, monkeypatch):
    """The slot's clock starts at this pilot's launch, whatever its caller's environment says."""
    monkeypatch.setenv("NODEPILOT_LAUNCHED_AT", str(time.time() - 3600))  # an hour ago: the slot would be over
    add_jobs(site, {"PandaID": 7410, "attemptNr": 1, "transformation": "true", "jobPars": ""})
    result = run_pilot(site, job_server.url, "--lifetime", "3000", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 7410 in job_server.jobs(), result.stderr[-3000:]
    assert final_update(job_server.jobs()[7410])["job_status"] == "finished"
