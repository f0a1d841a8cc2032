"""The legacy endpoints (``/server/panda/<method>``) of the local job server, over real HTTP.

Expected replies follow pandaserver/server/panda.py and jobdispatcher/JobDispatcher.py: parameters
as keyword arguments (strings from a form; a JSON body is gunzipped and its booleans become
"True"/"False"), replies JSON when Accept contains application/json, else URL-encoded.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from nodepilot.jobserver.legacy import LegacyApi
from nodepilot.panda.legacy import GET_JOB_NAMES, UPDATE_JOB_NAMES, LegacyClient
from tests.panda.serving import Server, serving, write_jobs

JOB = {"PandaID": 4242, "attemptNr": 2, "jobName": "test.job", "transformation": "run.sh", "jobPars": "--in a",
       "coreCount": 1, "logFile": "job.log.tgz", "outFiles": "job.log.tgz"}
ACCEPT_JSON = {"Accept": "application/json"}
GZIP_JSON = {"Content-Type": "application/json", "Content-Encoding": "gzip", "Accept": "application/json"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(write_jobs(tmp_path / "jobs", a=JOB, b=[{"PandaID": 2}, {"PandaID": 3}]),
                 tmp_path / "server.sqlite") as running:
        yield running


def post(server: Server, method: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
         content: bytes | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/server/panda/{method}", data=data, content=content, headers=headers or {},
                      timeout=10)


def urlencoded(reply: httpx.Response) -> dict[str, str]:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return dict(parse_qsl(reply.text, keep_blank_values=True))


def test_get_job_urlencoded_is_a_flat_map_of_strings(server: Server):
    reply = urlencoded(post(server, "getJob", {"siteName": "Q", "node": "wn01", "mem": "2000"}))
    assert reply == {"StatusCode": "0", **{k: str(v) for k, v in JOB.items()}, "nSent": "0"}


def test_get_job_json(server: Server):
    reply = post(server, "getJob", {"siteName": "Q"}, ACCEPT_JSON)
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json() == {"StatusCode": 0, **JOB, "nSent": 0}


def test_bulk_and_no_more_jobs(server: Server):
    post(server, "getJob", {"siteName": "Q"})
    bulk = urlencoded(post(server, "getJob", {"siteName": "Q", "nJobs": "5"}))
    assert bulk["StatusCode"] == "0" and [j["PandaID"] for j in json.loads(bulk["jobs"])] == [2, 3]
    assert urlencoded(post(server, "getJob", {"siteName": "Q"})) == {"StatusCode": "20"}
    assert post(server, "getJob", {"siteName": "Q"}, ACCEPT_JSON).json() == {
        "StatusCode": 20, "errorDialog": "no jobs in PanDA"}


def test_update_job_and_what_is_recorded(server: Server):
    post(server, "getJob", {"siteName": "Q"})
    running = {"jobId": "4242", "state": "running", "attemptNr": "2", "startTime": "2026-01-01 10:00:00",
               "timestamp": "2026-01-01T10:00:00", "maxRSS": "1024"}
    assert urlencoded(post(server, "updateJob", running)) == {"StatusCode": "0", "command": "NULL"}
    final = {"jobId": 4242, "state": "finished", "attemptNr": 2, "endTime": "2026-01-01 11:00:00",
             "pilotErrorCode": 0, "xml": "{}"}
    body = gzip.compress(json.dumps(final).encode())
    assert post(server, "updateJob", headers=GZIP_JSON, content=body).json() == {"StatusCode": 0, "command": "NULL"}

    (job, *_) = httpx.get(f"{server.url}/jobs", timeout=10).json()
    assert (job["status"], job["startTime"], job["endTime"]) == ("finished", "2026-01-01 10:00:00",
                                                                  "2026-01-01 11:00:00")
    recorded = [{k: v for k, v in u.items() if k not in ("time", "command", "applied")} for u in job["updates"]]
    assert recorded == [running, final]  # as received: strings from the form, JSON values from JSON


def test_wrong_attempt_and_invalid_state(server: Server):
    post(server, "getJob", {"siteName": "Q"})
    stale = post(server, "updateJob", {"jobId": "4242", "state": "running", "attemptNr": "1"}, ACCEPT_JSON)
    assert stale.json() == {"StatusCode": 0, "command": "tobekilled"}
    # the real server acknowledges an invalid state and drops the update
    assert urlencoded(post(server, "updateJob", {"jobId": "4242", "state": "done"})) == {"StatusCode": "0"}
    (job, *_) = httpx.get(f"{server.url}/jobs", timeout=10).json()
    assert job["status"] == "sent" and [u["command"] for u in job["updates"]] == ["tobekilled"]


def test_json_booleans_arrive_as_text(server: Server):
    body = gzip.compress(json.dumps({"siteName": "Q", "background": True, "viaTopic": False}).encode())
    assert post(server, "getJob", headers=GZIP_JSON, content=body).json()["PandaID"] == 4242
    assert acquire_params(server, 4242) == {"siteName": "Q", "background": "True", "viaTopic": "False"}


def acquire_params(server: Server, panda_id: int) -> dict[str, Any]:
    with sqlite3.connect(server.db_path) as db:
        (params,) = db.execute("SELECT acquire_params FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()
    return json.loads(params)


@pytest.mark.parametrize(("method", "data", "headers", "content", "text"), [
    ("updateJob", {"jobId": "4242", "state": "running", "someFutureField": "x"}, {}, None,
     "unexpected keyword argument 'someFutureField'"),
    ("updateJob", {"state": "running"}, {}, None, "missing 1 required positional argument: 'jobId'"),
    ("updateJob", {"jobId": "abc", "state": "running"}, {}, None, "invalid literal for int()"),
    ("getJob", None, {"Content-Type": "application/json"}, b'{"siteName": "Q"}', "Not a gzipped file"),
])
def test_what_fails_the_call(server: Server, method: str, data: Any, headers: dict[str, str],
                             content: bytes | None, text: str):
    reply = post(server, method, data, headers, content)
    assert reply.status_code == 500 and text in reply.text
    assert httpx.get(f"{server.url}/jobs", timeout=10).json() == []


def test_other_methods_are_forbidden(server: Server):
    reply = post(server, "getProxy", {"role": "pilot"})
    assert (reply.status_code, reply.text) == (403, "ERROR : method getProxy is forbidden")


def test_a_server_without_the_legacy_api(tmp_path: Path):
    """``--no-legacy``: every legacy method is refused as panda-server refuses a method it lacks; the
    new API still serves the jobs."""
    with serving(write_jobs(tmp_path / "jobs", a=JOB), tmp_path / "server.sqlite", "--no-legacy") as running:
        reply = post(running, "getJob", {"siteName": "Q"}, ACCEPT_JSON)
        assert (reply.status_code, reply.text) == (403, "ERROR : method getJob is forbidden")
        assert reply.headers["content-type"].startswith("text/plain")
        assert running.call("acquire_jobs", {"site_name": "Q"})["data"]["jobs"][0]["PandaID"] == 4242


def test_a_get_works_too(server: Server):
    reply = httpx.get(f"{server.url}/server/panda/getJob", params={"siteName": "Q"}, headers=ACCEPT_JSON, timeout=10)
    assert reply.json()["PandaID"] == 4242


def test_the_client_names_are_the_server_keyword_arguments():
    """What LegacyClient sends is exactly what the server's functions take (else an HTTP 500)."""

    def names(func: Any) -> set[str]:
        return set(inspect.signature(func).parameters) - {"self"}

    assert names(LegacyApi.getJob) == GET_JOB_NAMES
    assert names(LegacyApi.updateJob) == UPDATE_JOB_NAMES


@pytest.mark.parametrize("json_body", [False, True], ids=["form", "gzip-json"])
def test_the_legacy_client_against_the_server(server: Server, json_body: bool):
    async def pilot() -> tuple[Any, ...]:
        client = LegacyClient(server.url, timeout=10, retries=1, backoff_s=0.01, json_body=json_body)
        try:
            job = await client.acquire_job({"siteName": "LOCAL_TEST", "computingElement": "LOCAL_TEST",
                                            "prodSourceLabel": "managed", "diskSpace": 20480, "mem": 3999.5,
                                            "cpu": 2400, "node": "wn01", "remaining_time": 3600})
            running = await client.update_job({
                "jobId": job["PandaID"], "state": "running", "timestamp": "x", "attemptNr": job["attemptNr"],
                "siteName": "LOCAL_TEST", "node": "wn01", "startTime": "2026-01-01 10:00:00", "coreCount": 1,
                "cpuConsumptionTime": 12.4, "cpuConversionFactor": 1.0, "maxRSS": 1024.0, "totRBYTES": 3.2})
            final = await client.update_job({
                "jobId": job["PandaID"], "state": "finished", "attemptNr": job["attemptNr"],
                "endTime": "2026-01-01 11:00:00", "pilotErrorCode": 0, "metaData": {"exitCode": 0},
                "xml": json.dumps({"job.log.tgz": {"guid": "g", "fsize": 1, "adler32": "00000001"}})})
            stale = await client.update_job({"jobId": job["PandaID"], "state": "running", "attemptNr": 1})
            return job, running, final, stale
        finally:
            await client.aclose()

    job, running, final, stale = asyncio.run(asyncio.wait_for(pilot(), 60))
    # JSON replies: the definition's JSON types come back as they are
    assert job == {"StatusCode": 0, **JOB, "nSent": 0}
    assert (running.command, final.command, stale.command) == (None, None, "tobekilled")
    (record, *_) = httpx.get(f"{server.url}/jobs", timeout=10).json()
    assert record["status"] == "finished"
    number = (lambda v: v) if json_body else str  # a form sends text, JSON numbers
    sent = record["updates"][0]
    assert (sent["maxRSS"], sent["totRBYTES"], sent["cpuConsumptionTime"]) == (number(1024), number(3), number(12))
    assert "timestamp" in sent and "cpuConversionFactor" in sent
    asked = acquire_params(server, 4242)
    assert "remaining_time" not in asked and asked["mem"] == number(4000)  # getJob does not take remaining_time
