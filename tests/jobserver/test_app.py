"""The local job server, started for real with run_server and spoken to over HTTP.

Requests and the replies expected are written from docs/protocol.md and the real panda-server
(api/v1/pilot_api.py, api/v1/common.py, server/panda.py), not recorded from this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nodepilot.jobserver.app import PilotApi
from nodepilot.panda.api_v1 import ACQUIRE_FIELDS, UPDATE_FIELDS, ApiV1Client
from nodepilot.panda.errors import ServerError
from tests.panda.serving import JSON_HEADERS, Server, serving, write_jobs

NO_JOBS = {"success": False, "message": "No jobs in PanDA", "data": None}
UPDATE_OK = {"success": True, "message": "", "data": {"StatusCode": 0, "command": None}}
KILL = {"success": True, "message": "", "data": {"StatusCode": 0, "command": "tobekilled"}}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(file name -> content, ...): write the jobs directory and start a server on it."""
    stack = contextlib.ExitStack()

    def _start(**files: Any) -> Server:
        return stack.enter_context(serving(write_jobs(tmp_path / "jobs", **files), tmp_path / "server.sqlite"))

    with stack:
        yield _start


def params(update: dict[str, Any]) -> dict[str, Any]:
    """An update as /jobs lists it, without the server's notes: the parameters as sent."""
    return {k: v for k, v in update.items() if k not in ("time", "command", "applied")}


JOB = {"PandaID": 4242, "attemptNr": 2, "jobName": "test.job", "transformation": "run.sh", "jobPars": "--in a",
       "coreCount": 1, "logFile": "job.log.tgz", "outFiles": "job.log.tgz"}


# --- the pilot's round trip ---------------------------------------------------------------------
def test_acquire_update_and_every_update_recorded(start):
    server = start(a=JOB)
    assert server.call("acquire_jobs", {"site_name": "LOCAL_TEST", "node": "wn01", "disk_space": 20480,
                                        "memory": 4000, "n_jobs": 1}) == {
        "success": True, "message": "",
        "data": {"StatusCode": 0, "jobs": [{**JOB, "StatusCode": 0, "nSent": 0}]},
    }
    running = {"job_id": 4242, "job_status": "running", "attempt_nr": 2, "node": "wn01",
               "start_time": "2026-01-01 10:00:00", "core_count": 1, "max_rss": 1024}
    final = {"job_id": 4242, "job_status": "finished", "attempt_nr": 2, "end_time": "2026-01-01 11:00:00",
             "pilot_error_code": 0, "trans_exit_code": 0, "cpu_conversion_factor": 1.5,
             "job_output_report": '{"job.log.tgz": {"guid": "g", "fsize": 1, "adler32": "00000001"}}'}
    assert server.call("update_job", running) == UPDATE_OK
    assert server.call("update_job", final) == UPDATE_OK

    (job,) = server.jobs()
    assert (job["PandaID"], job["status"], job["attemptNr"]) == (4242, "finished", 2)
    assert (job["startTime"], job["endTime"]) == ("2026-01-01 10:00:00", "2026-01-01 11:00:00")
    assert [params(u) for u in job["updates"]] == [running, final]
    assert [u["command"] for u in job["updates"]] == [None, None]
    assert httpx.get(f"{server.url}/jobs/4242", timeout=10).json() == job
    assert httpx.get(f"{server.url}/jobs/1", timeout=10).status_code == 404

    with sqlite3.connect(server.db_path) as db:  # kept on disk, not only in memory
        rows = db.execute("SELECT panda_id, params FROM updates ORDER BY id").fetchall()
    assert [(pid, json.loads(params)) for pid, params in rows] == [(4242, running), (4242, final)]


def test_no_more_jobs(start):
    server = start(a=JOB)
    assert server.call("acquire_jobs", {"site_name": "Q"})["success"] is True
    assert server.call("acquire_jobs", {"site_name": "Q"}) == NO_JOBS


def test_jobs_in_file_name_order_each_once_bulk_too(start):
    server = start(b=[{"PandaID": 2}, {"PandaID": 3}], a={"PandaID": 1}, c={"PandaID": 4})
    first = server.call("acquire_jobs", {"site_name": "Q"})["data"]["jobs"]
    bulk = server.call("acquire_jobs", {"site_name": "Q", "n_jobs": 2})["data"]["jobs"]
    rest = server.call("acquire_jobs", {"site_name": "Q", "n_jobs": 5})["data"]["jobs"]
    assert [j["PandaID"] for j in first + bulk + rest] == [1, 2, 3, 4]
    assert server.call("acquire_jobs", {"site_name": "Q", "n_jobs": 5}) == NO_JOBS


def test_broken_definitions_are_served_as_they_are_unreadable_files_skipped(start):
    server = start(a="{not json", b=[{"PandaID": "x", "inFiles": "../etc/passwd"}, "junk"])
    jobs = server.call("acquire_jobs", {"site_name": "Q", "n_jobs": 5})["data"]["jobs"]
    assert jobs == [{"PandaID": "x", "inFiles": "../etc/passwd", "StatusCode": 0, "nSent": 0}, "junk"]
    assert "a.json" in server.stop_and_read_log()


def test_wrong_attempt_number_is_told_to_kill_and_ignored(start):
    server = start(a=JOB)
    server.call("acquire_jobs", {"site_name": "Q"})
    assert server.call("update_job", {"job_id": 4242, "job_status": "running", "attempt_nr": 1}) == KILL
    (job,) = server.jobs()
    assert job["status"] == "sent" and len(job["updates"]) == 1
    assert job["updates"][0]["command"] == "tobekilled" and job["updates"][0]["applied"] is False


def test_an_update_after_the_final_state_is_recorded_but_changes_nothing(start):
    server = start(a=JOB)
    server.call("acquire_jobs", {"site_name": "Q"})
    assert server.call("update_job", {"job_id": 4242, "job_status": "failed", "pilot_error_code": 1305}) == UPDATE_OK
    assert server.call("update_job", {"job_id": 4242, "job_status": "running"}) == UPDATE_OK
    (job,) = server.jobs()
    assert job["status"] == "failed" and [u["applied"] for u in job["updates"]] == [True, False]


def test_an_update_for_a_job_never_handed_out_is_told_to_kill(start):
    server = start()
    assert server.call("update_job", {"job_id": 99, "job_status": "running"}) == KILL


def test_a_time_in_another_form_is_dropped(start):
    server = start(a=JOB)
    server.call("acquire_jobs", {"site_name": "Q"})
    assert server.call("update_job", {"job_id": 4242, "job_status": "running",
                                      "start_time": "2026-01-01T10:00:00Z"}) == UPDATE_OK
    assert server.jobs()[0]["startTime"] is None


def test_gzipped_json_body(start):
    server = start(a=JOB)
    body = gzip.compress(json.dumps({"site_name": "Q"}).encode())
    reply = server.post("acquire_jobs", content=body, headers={**JSON_HEADERS, "Content-Encoding": "gzip"})
    assert reply.json()["data"]["jobs"][0]["PandaID"] == 4242


# --- what the real server refuses -----------------------------------------------------------------
@pytest.mark.parametrize(("method", "body", "message"), [
    ("update_job", {"job_id": "4242", "job_status": "running"}, "Type error: 'job_id' must be of type int, got str."),
    ("update_job", {"job_id": 4242, "job_status": "running", "n_events": 1.5},
     "Type error: 'n_events' must be of type int | None, got float."),
    ("update_job", {"job_id": 4242, "job_status": "running", "timestamp": 1},
     "Argument error: got an unexpected keyword argument 'timestamp'"),
    ("update_job", {"job_status": "running"}, "Argument error: missing a required argument: 'job_id'"),
    ("acquire_jobs", {"site_name": "Q", "disk_space": "20480"},
     "Type error: 'disk_space' must be of type int | None, got str."),
    ("acquire_jobs", {"siteName": "Q"}, "Argument error: missing a required argument: 'site_name'"),
])
def test_parameters_are_checked_against_the_signature(start, method: str, body: dict, message: str):
    server = start(a=JOB)
    assert server.call(method, body) == {"success": False, "message": message, "data": None}
    assert server.jobs() == []  # nothing handed out, nothing recorded


def test_invalid_job_status(start):
    server = start(a=JOB)
    server.call("acquire_jobs", {"site_name": "Q"})
    assert server.call("update_job", {"job_id": 4242, "job_status": "done"}) == {
        "success": False, "message": "Invalid job status: done", "data": {"StatusCode": 50}}
    assert server.jobs()[0]["updates"] == []


def test_a_form_body_arrives_as_strings_and_is_refused(start):
    server = start(a=JOB)
    server.call("acquire_jobs", {"site_name": "Q"})
    reply = server.post("update_job", data={"job_id": "4242", "job_status": "running"},
                        headers={"Accept": "application/json"})
    assert reply.json() == {"success": False, "message": "Type error: 'job_id' must be of type int, got str.",
                            "data": None}
    assert server.jobs()[0]["updates"] == []


def test_without_accept_json_the_reply_is_not_json(start):
    server = start(a=JOB)
    reply = server.post("update_job", data={"job_id": "4242", "job_status": "running"}, headers={})
    with pytest.raises(ValueError):
        json.loads(reply.text)
    assert reply.text.startswith("{'success': False")
    assert reply.headers["content-type"].startswith("text/plain")


def test_a_json_body_without_accept_still_gets_json_as_on_the_real_server(start):
    server = start(a=JOB)
    reply = server.post("acquire_jobs", {"site_name": "Q"}, headers={"Content-Type": "application/json"})
    assert reply.json()["success"] is True


def test_a_body_that_is_not_json_is_a_server_error(start):
    server = start(a=JOB)
    assert server.post("acquire_jobs", content=b"{site_name").status_code == 500
    assert server.post("acquire_jobs", content=b'["site_name"]').status_code == 500
    assert server.jobs() == []


def test_get_and_unknown_methods(start):
    server = start(a=JOB)
    reply = httpx.get(f"{server.url}/api/v1/pilot/acquire_jobs", headers=JSON_HEADERS, timeout=10)
    assert reply.json() == {"success": False, "message": "expecting POST, received GET", "data": None}
    assert server.post("get_secrets", {}).status_code == 403


# --- the client end to end --------------------------------------------------------------------------
def test_client_against_the_server(start):
    server = start(a=JOB)

    async def pilot() -> tuple[Any, ...]:
        async with ApiV1Client(server.url, timeout=10, retries=1, backoff_s=0.01) as client:
            job = await client.acquire_job({"siteName": "LOCAL_TEST", "computingElement": "LOCAL_TEST",
                                            "prodSourceLabel": "managed", "diskSpace": 20480, "mem": 3999.5,
                                            "cpu": 2400, "node": "wn01"})
            heartbeat = await client.update_job({
                "jobId": job["PandaID"], "state": "running", "timestamp": "x", "attemptNr": job["attemptNr"],
                "siteName": "LOCAL_TEST", "node": "wn01", "schedulerID": "nodepilot",
                "pilotID": "nodepilot|local|PR|0.1.0", "batchID": "123", "startTime": "2026-01-01 10:00:00",
                "coreCount": 1, "cpuConsumptionTime": 12.4, "cpuConsumptionUnit": "s",
                "cpuConversionFactor": 1, "maxRSS": 1024.0, "maxPSS": 900, "avgRSS": 800.5, "maxVMEM": 2000,
                "maxSWAP": 0, "avgPSS": 700, "avgVMEM": 1900, "avgSWAP": 0, "totRCHAR": 1, "totWCHAR": 2,
                "totRBYTES": 3, "totWBYTES": 4, "rateRCHAR": 0.1, "rateWCHAR": 0.2, "rateRBYTES": 0.3,
                "rateWBYTES": 0.4, "jobMetrics": "coreCount=1", "nEvents": 0,
            })
            final = await client.update_job({
                "jobId": str(job["PandaID"]), "state": "finished", "attemptNr": "2", "endTime": "2026-01-01 11:00:00",
                "pilotErrorCode": 0, "pilotErrorDiag": "", "transExitCode": 0, "exeErrorCode": 0,
                "exeErrorDiag": "", "pilotTiming": "1|2|3|4|5|6", "metaData": {"exitCode": 0},
                "xml": json.dumps({"job.log.tgz": {"guid": "g", "fsize": 1, "adler32": "00000001"}}),
            })
            stale = await client.update_job({"jobId": 4242, "state": "running", "attemptNr": 1})
            with pytest.raises(ServerError) as rejected:
                await client.update_job({"jobId": 4242, "state": "done"})
            again = await client.acquire_job({"siteName": "LOCAL_TEST"})
            return job, heartbeat, final, stale, rejected.value, again

    job, heartbeat, final, stale, rejected, again = asyncio.run(asyncio.wait_for(pilot(), 60))
    assert job == {**JOB, "StatusCode": 0, "nSent": 0}
    assert (heartbeat.command, heartbeat.status_code, final.command) == (None, 0, None)
    assert stale.command == "tobekilled"
    assert "Invalid job status: done" in str(rejected) and not rejected.retryable
    assert again is None

    (record,) = server.jobs()
    assert record["status"] == "finished"
    sent = [params(u) for u in record["updates"]]
    assert "timestamp" not in sent[0] and sent[0]["max_rss"] == 1024 and sent[0]["cpu_consumption_time"] == 12
    assert sent[1]["job_id"] == 4242 and sent[1]["attempt_nr"] == 2 and sent[1]["meta_data"] == '{"exitCode": 0}'


def test_the_update_names_are_exactly_those_of_the_protocol():
    """docs/protocol.md section 3: update_job accepts exactly these names."""
    documented = {
        "job_id", "job_status", "job_output_report", "meta_data", "pilot_log", "node", "site_name",
        "scheduler_id", "pilot_id", "batch_id", "attempt_nr", "start_time", "end_time", "core_count",
        "mean_core_count", "cpu_consumption_time", "cpu_consumption_unit", "cpu_conversion_factor",
        "cpu_architecture_level", "n_events", "n_input_files", "job_metrics", "pilot_timing",
        "pilot_error_code", "pilot_error_diag", "exe_error_code", "exe_error_diag", "trans_exit_code",
        "stdout", "job_sub_status", "corrupted_files", "max_rss", "max_vmem", "max_swap", "max_pss",
        "avg_rss", "avg_vmem", "avg_swap", "avg_pss", "tot_rchar", "tot_wchar", "tot_rbytes",
        "tot_wbytes", "rate_rchar", "rate_wchar", "rate_rbytes", "rate_wbytes", "grid", "source_site",
        "destination_site", "timeout"
    }
    assert set(inspect.signature(PilotApi.update_job).parameters) - {"self"} == documented
    assert {v1 for v1, _ in UPDATE_FIELDS.values()} == documented - {"timeout"}


def test_the_acquire_names_are_those_of_the_protocol():
    """docs/protocol.md section 2: the new API's names for the getJob request."""
    documented = {"site_name", "computing_element", "prod_source_label", "disk_space", "memory", "node",
                  "resource_type", "job_type", "harvester_id", "worker_id", "scheduler_id", "remaining_time",
                  "n_jobs", "task_id"}
    assert {v1 for v1, _ in ACQUIRE_FIELDS.values()} == documented
    assert documented <= set(inspect.signature(PilotApi.acquire_jobs).parameters)
