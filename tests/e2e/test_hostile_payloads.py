"""Hostile payloads through the whole pilot: each is stopped with the right code and diag, its log
is staged out, and none of its processes is left (checked in the process table)."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from tests.e2e.conftest import add_jobs, final_update, run_pilot, write_queuedata

FAST_WATCHDOG = {"period_s": 0.3, "sample_interval_s": 0.3}


def hostile_job(panda_id: int, script: str, **extra) -> dict:
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": "bash", "jobPars": f"-c '{script}'",
            "outFiles": f"l{panda_id}.tgz", "logFile": f"l{panda_id}.tgz", "scopeLog": "demo.log", **extra}


def queuedata(site, **watchdog) -> str:
    return write_queuedata(site, maxwdir_mb=watchdog.pop("maxwdir_mb", 0), watchdog={**FAST_WATCHDOG, **watchdog})


CASES = [
    # name, script, job fields, watchdog, expected code, words in diag
    ("looping", "sleep 60", {}, {"looping_limit_s": 1.5}, 1150, "modified"),
    ("memory", "python3 -c \"import time; b=[]\nfor i in range(60): b.append(bytearray(10<<20)); time.sleep(0.1)\"",
     {}, {"memory_limit_mb": 150}, 1235, "PSS"),
    ("stdout", "yes hostile", {}, {"stdout_limit_mb": 20}, 1106, "payload.stdout"),
    ("workdir", "for i in $(seq 60); do head -c 1048576 /dev/zero > f$i; sleep 0.05; done; sleep 30", {},
     {"maxwdir_mb": 10}, 1104, "work"),
    ("walltime", "sleep 60", {"maxWalltime": 2}, {}, 1213, "wall"),
    # ignores SIGTERM, and a double-forked grandchild left the session before the first sample
    ("escapee", "( setsid sleep 300 & ) ; trap \"\" TERM; sleep 60", {}, {"looping_limit_s": 1.5}, 1150,
     "modified"),
]


@pytest.mark.parametrize("name, script, fields, watchdog, code, words", CASES, ids=[c[0] for c in CASES])
def test_watchdog_stops_hostile_payload(site, job_server, name, script, fields, watchdog, code, words):
    panda_id = 7000 + [c[0] for c in CASES].index(name)
    add_jobs(site, hostile_job(panda_id, script, **fields))
    t0 = time.monotonic()
    result = run_pilot(site, job_server.url, "--queuedata", queuedata(site, **watchdog), timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[panda_id])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == code, update
    assert words.lower() in update["pilot_error_diag"].lower(), update["pilot_error_diag"]
    assert f"l{panda_id}.tgz" in json.loads(update["job_output_report"])
    assert time.monotonic() - t0 < 45  # stopped by the watchdog, not by running to its end
    workdir = str(site / "work" / f"PanDA_Pilot-{panda_id}")
    stray = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.cwd().startswith(workdir) and p.status() != psutil.STATUS_ZOMBIE:
                stray.append(p)
        except psutil.Error:
            pass
    assert not stray, stray


def test_segfaulting_payload_is_1328(site, job_server):
    add_jobs(site, hostile_job(7101, "kill -SEGV $$"))
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[7101])
    assert update["pilot_error_code"] == 1328 and "l7101.tgz" in json.loads(update["job_output_report"])


def test_malformed_job_report_is_a_clear_failure_not_a_crash(site, job_server):
    add_jobs(site, hostile_job(7102, "echo \"{not json\" > jobReport.json; exit 0"),
             hostile_job(7103, "echo next job runs"))
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_server.jobs()
    # the payload succeeded: an unreadable report is metadata lost, not a failure; its text still goes
    # to the server as it was (metaData), and the exit code is the payload's
    update = final_update(jobs[7102])
    assert update["job_status"] == "finished" and update["pilot_error_code"] == 0, update
    assert update["trans_exit_code"] == 0 and update["meta_data"] == "{not json\n", update
    assert final_update(jobs[7103])["job_status"] == "finished"
    assert os.path.exists(site / "work" / "PanDA_Pilot-7102" / "jobReport.json")


def test_payload_out_of_memory_is_1212(site, job_server):
    add_jobs(site, hostile_job(7104, "python3 -c \"bytearray(1 << 50)\""))
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[7104])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1212, update
    assert "MemoryError" in update["pilot_error_diag"] and "l7104.tgz" in json.loads(update["job_output_report"])
