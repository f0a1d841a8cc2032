"""ApiV1Client against hand-written exchanges of docs/protocol.md sections 1-3 (httpx.MockTransport).

Expected request bodies and server replies are written from the document and from the real
panda-server's handler signatures, not recorded from our own output. Replies carry
``Content-Type: text/plain`` because that is how the real server labels its JSON.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import pytest

from nodepilot.config import PilotConfig
from nodepilot.job import parse_job
from nodepilot.panda import http as panda_http
from nodepilot.panda.api_v1 import ApiV1Client
from nodepilot.panda.client import UpdateReply
from nodepilot.panda.connect import make_client
from nodepilot.panda.errors import ServerError
from nodepilot.panda.legacy import LegacyClient
from nodepilot.panda.standalone import StandaloneClient
from tests.panda.mock import BASE, Recorder, run, text

NO_JOBS = b'{"success": false, "message": "No jobs in PanDA", "data": null}'
UPDATE_OK = b'{"success": true, "message": "", "data": {"StatusCode": 0, "command": null}}'
ACQUIRE_OK = (b'{"success": true, "message": "", "data": {"StatusCode": 0, "jobs": [{"PandaID": 4242,'
              b' "jobName": "test.job", "attemptNr": 2, "transformation": "run.sh", "jobPars": "--in a",'
              b' "coreCount": 8, "maxCpuCount": 3600, "inFiles": "a.root", "GUID": "g-a", "fsize": "10",'
              b' "checksum": "ad:0000000a", "scopeIn": "mc", "logFile": "job.log.tgz", "outFiles": "job.log.tgz",'
              b' "StatusCode": 0, "nSent": 0}]}}')


def same_json(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Equal including JSON types (2048 is not 2048.0, "7" is not 7)."""
    return json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


# --- requests ---------------------------------------------------------------------------------
def test_acquire_request_uses_v1_names_and_json_types():
    rec = Recorder(text(ACQUIRE_OK))
    params = {  # as the monitor builds them: legacy names, some values as strings or floats
        "siteName": "LOCAL_TEST", "computingElement": "LOCAL_CE", "prodSourceLabel": "managed",
        "diskSpace": "20480", "mem": 3999.6, "cpu": 2400, "node": "wn01.example.org",
        "resourceType": "SCORE", "jobType": "managed", "harvester_id": "h1", "worker_id": "17",
        "remaining_time": 3600.4, "workingGroup": "ignored", "allowOtherCountry": "False",
    }
    job = run(rec.client().acquire_job(params))

    request = rec.requests[0]
    assert request.method == "POST"
    assert request.url == f"{BASE}/api/v1/pilot/acquire_jobs"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert same_json(rec.body(), {
        "site_name": "LOCAL_TEST", "computing_element": "LOCAL_CE", "prod_source_label": "managed",
        "disk_space": 20480, "memory": 4000, "node": "wn01.example.org", "resource_type": "SCORE",
        "job_type": "managed", "harvester_id": "h1", "worker_id": 17, "remaining_time": 3600, "n_jobs": 1,
    })
    assert job["PandaID"] == 4242 and job["StatusCode"] == 0
    parsed = parse_job(job)  # numbers as JSON numbers are a valid job definition
    assert (parsed.panda_id, parsed.attempt_nr, parsed.core_count) == (4242, 2, 8)


def test_update_request_uses_v1_names_types_and_drops_the_rest():
    rec = Recorder(text(UPDATE_OK))
    report = json.dumps({"out.root": {"guid": "g1", "fsize": 123, "adler32": "0a1b2c3d", "surl": "file:///se/out.root",
                                      "endpoint": "LOCAL_SE"}})
    fields = {
        "jobId": "4242", "state": "finished", "timestamp": "2026-01-01T10:00:00", "siteName": "LOCAL_TEST",
        "node": "wn01", "attemptNr": "2", "schedulerID": "nodepilot", "pilotID": "nodepilot|SLURM|PR|0.1.0",
        "batchID": 98765, "startTime": "2026-01-01 10:00:00", "endTime": "2026-01-01 11:00:00",
        "coreCount": "8", "cpuConsumptionTime": 1234.6, "cpuConsumptionUnit": "s", "cpuConversionFactor": 1,
        "maxRSS": 2048.0, "maxPSS": "1024", "avgRSS": 1500.2, "totRBYTES": 10, "rateWBYTES": 2.5,
        "jobMetrics": "coreCount=8 nEvents=10", "nEvents": "10", "pilotErrorCode": 0, "pilotErrorDiag": "",
        "transExitCode": "0", "exeErrorCode": None, "exeErrorDiag": None, "pilotTiming": "1|2|3|4|5|6",
        "metaData": '{"exitCode": 0}', "xml": report, "cpu": 2400, "someFutureField": "x",
    }
    reply = run(rec.client().update_job(fields))

    request = rec.requests[0]
    assert request.url == f"{BASE}/api/v1/pilot/update_job"
    assert request.headers["Accept"] == "application/json"
    assert same_json(rec.body(), {
        "job_id": 4242, "job_status": "finished", "site_name": "LOCAL_TEST", "node": "wn01", "attempt_nr": 2,
        "scheduler_id": "nodepilot", "pilot_id": "nodepilot|SLURM|PR|0.1.0", "batch_id": "98765",
        "start_time": "2026-01-01 10:00:00", "end_time": "2026-01-01 11:00:00", "core_count": 8,
        "cpu_consumption_time": 1235, "cpu_consumption_unit": "s", "cpu_conversion_factor": 1.0,
        "max_rss": 2048, "max_pss": 1024, "avg_rss": 1500, "tot_rbytes": 10, "rate_wbytes": 2,
        "job_metrics": "coreCount=8 nEvents=10", "n_events": 10, "pilot_error_code": 0, "pilot_error_diag": "",
        "trans_exit_code": 0, "pilot_timing": "1|2|3|4|5|6", "meta_data": '{"exitCode": 0}',
        "job_output_report": report,
    })
    assert reply == UpdateReply(command=None, status_code=0, raw=json.loads(UPDATE_OK))


def test_text_fields_given_as_objects_go_as_json_text():
    rec = Recorder(text(UPDATE_OK))
    run(rec.client().update_job({"jobId": 1, "state": "running", "metaData": {"exitCode": 0}}))
    assert rec.body()["meta_data"] == '{"exitCode": 0}'


def test_base_url_may_end_in_slash_or_api_v1():
    for base in (BASE + "/", BASE + "/api/v1/"):
        rec = Recorder(text(NO_JOBS))
        run(ApiV1Client(base, transport=httpx.MockTransport(rec)).acquire_job({"siteName": "Q"}))
        assert str(rec.requests[0].url) == f"{BASE}/api/v1/pilot/acquire_jobs"


def test_required_fields_are_checked_before_sending():
    rec = Recorder(text(UPDATE_OK))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_job({"state": "running"}))
    assert "job_id" in str(err.value) and not err.value.retryable
    with pytest.raises(ServerError):
        run(rec.client().update_job({"jobId": "not a number", "state": "running"}))
    with pytest.raises(ServerError):
        run(rec.client().acquire_job({"node": "wn01"}))
    assert rec.requests == []


# --- replies ----------------------------------------------------------------------------------
def test_no_job_is_none():
    assert run(Recorder(text(NO_JOBS)).client().acquire_job({"siteName": "Q"})) is None
    empty = b'{"success": true, "message": "", "data": {"StatusCode": 0, "jobs": []}}'
    assert run(Recorder(text(empty)).client().acquire_job({"siteName": "Q"})) is None


def test_extra_jobs_in_a_reply_are_kept_for_the_next_call():
    two = (b'{"success": true, "message": "", "data": {"StatusCode": 0, "jobs": ['
           b'{"PandaID": 1, "StatusCode": 0, "nSent": 0}, {"PandaID": 2, "StatusCode": 0, "nSent": 0}]}}')
    rec = Recorder(text(two), text(NO_JOBS))

    async def three_calls() -> list[Any]:
        client = rec.client()
        return [await client.acquire_job({"siteName": "Q"}) for _ in range(3)]

    first, second, third = run(three_calls())
    assert (first["PandaID"], second["PandaID"], third) == (1, 2, None)
    assert len(rec.requests) == 2


@pytest.mark.parametrize(("command", "expected"), [
    ("null", None), ("NULL", None), ("tobekilled", "tobekilled"), ("softkill", "softkill"),
    ("debug", "debug"), ("badattemptnr", "tobekilled"),
])
def test_commands(command: str, expected: str | None):
    body = json.dumps({"success": True, "message": "", "data": {"StatusCode": 0, "command": command}})
    reply = run(Recorder(text(body.encode())).client().update_job({"jobId": 1, "state": "running"}))
    assert reply.command == expected


@pytest.mark.parametrize("reply", [
    b'{"success": false, "message": "Type error: \'job_id\' must be of type int, got str.", "data": null}',
    b'{"success": false, "message": "Argument error: got an unexpected keyword argument \'timestamp\'",'
    b' "data": null}',
    b'{"success": false, "message": "Invalid job status: done", "data": {"StatusCode": 50}}',
    b'{"success": false, "message": "production or pilot role required", "data": null}',
])
def test_a_rejected_update_is_an_error_and_not_retried(reply: bytes):
    rec = Recorder(text(reply))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_job({"jobId": 1, "state": "finished"}))
    assert not err.value.retryable and err.value.code == 1318
    assert len(rec.requests) == 1


def test_an_update_the_server_could_not_store_is_retryable():
    timed_out = b'{"success": true, "message": "Timed out", "data": {"StatusCode": 10}}'
    with pytest.raises(ServerError) as err:
        run(Recorder(text(timed_out)).client().update_job({"jobId": 1, "state": "finished"}))
    assert err.value.retryable


def test_acquire_refused_for_another_reason_is_an_error():
    refused = b'{"success": false, "message": "no production/pilot role in VOMS FQANs", "data": null}'
    with pytest.raises(ServerError) as err:
        run(Recorder(text(refused)).client().acquire_job({"siteName": "Q"}))
    assert "role" in str(err.value) and not err.value.retryable


# --- retries ----------------------------------------------------------------------------------
def test_503_twice_then_200_is_retried():  # when told to: by default the outbox retries updates
    rec = Recorder(text(b"busy", 503), text(b"busy", 503), text(UPDATE_OK))
    reply = run(rec.client(retries=2).update_job({"jobId": 1, "state": "running"}))
    assert reply.status_code == 0 and len(rec.requests) == 3
    assert all(r.content == rec.requests[0].content for r in rec.requests)


def test_retries_are_bounded():
    rec = Recorder(text(b"busy", 503))
    with pytest.raises(ServerError) as err:
        run(rec.client(retries=2).update_job({"jobId": 1, "state": "running"}))
    assert err.value.retryable and "503" in str(err.value)
    assert len(rec.requests) == 3


def test_429_and_connection_errors_are_retried():
    rec = Recorder(text(b"slow down", 429), httpx.ConnectError("refused"), text(NO_JOBS))
    assert run(rec.client(retries=2).acquire_job({"siteName": "Q"})) is None
    assert len(rec.requests) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_other_4xx_is_not_retried(status: int):
    rec = Recorder(text(b"ERROR : method x is forbidden", status))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_job({"jobId": 1, "state": "running"}))
    assert not err.value.retryable and str(status) in str(err.value)
    assert len(rec.requests) == 1


def test_a_call_that_hangs_times_out_and_is_retried():
    async def hang() -> httpx.Response:
        await asyncio.sleep(30)
        return text(UPDATE_OK)

    rec = Recorder(hang)
    with pytest.raises(ServerError) as err:
        run(rec.client(timeout=0.2, retries=1).update_job({"jobId": 1, "state": "running"}), timeout=10)
    assert err.value.retryable and len(rec.requests) == 2


# --- malformed replies --------------------------------------------------------------------------
HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


MALFORMED = [
    HTML,
    b'{"success": true, "message": "", "data": {"StatusCode": 0, "jo',  # truncated
    b"{'success': True, 'message': '', 'data': {'StatusCode': 0}}",  # the text reply without Accept
    b"",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'{"success": "yes", "data": {"StatusCode": 0, "jobs": []}}',
    b'{"success": true, "message": "", "data": null}',
    b'{"success": true, "message": "", "data": {"StatusCode": "zero", "jobs": []}}',
    b'{"success": true, "message": "", "data": {"StatusCode": 30}}',
]
MALFORMED_JOBS = [
    b'{"success": true, "message": "", "data": {"StatusCode": 0}}',
    b'{"success": true, "message": "", "data": {"StatusCode": 0, "jobs": {"PandaID": 1}}}',
    b'{"success": true, "message": "", "data": {"StatusCode": 0, "jobs": ["not a job"]}}',
]


@pytest.mark.parametrize("body", MALFORMED + MALFORMED_JOBS)
def test_malformed_acquire_replies_are_server_errors(body: bytes):
    with pytest.raises(ServerError):
        run(Recorder(text(body)).client().acquire_job({"siteName": "Q"}))


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_update_replies_are_server_errors(body: bytes):
    with pytest.raises(ServerError):
        run(Recorder(text(body)).client().update_job({"jobId": 1, "state": "finished"}))


def test_html_error_page_message_says_what_came_back():
    with pytest.raises(ServerError) as err:
        run(Recorder(text(HTML)).client().acquire_job({"siteName": "Q"}))
    assert "not JSON" in str(err.value) and "Bad Gateway" in str(err.value)


def test_oversized_reply_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(panda_http, "MAX_REPLY_BYTES", 1000)
    big = b'{"success": true, "message": "' + b"x" * 2000 + b'", "data": null}'

    async def chunks() -> Any:
        yield big[:900]
        yield big[900:]

    # with Content-Length; without it, in one piece and in pieces
    for reply in (text(big), httpx.Response(200, stream=httpx.ByteStream(big)), httpx.Response(200, content=chunks())):
        with pytest.raises(ServerError) as err:
            run(Recorder(reply).client().update_job({"jobId": 1, "state": "running"}))
        assert "larger than" in str(err.value)


def test_a_gzip_encoded_reply_is_decoded():
    reply = httpx.Response(200, content=gzip.compress(UPDATE_OK), headers={"Content-Encoding": "gzip"})
    assert run(Recorder(reply).client().update_job({"jobId": 1, "state": "running"})).status_code == 0


# --- choosing the client -------------------------------------------------------------------------
def test_make_client_by_configuration(tmp_path):
    standalone = make_client(PilotConfig(job_file=str(tmp_path / "job.json"), updates_file=str(tmp_path / "u.jsonl")))
    assert isinstance(standalone, StandaloneClient)
    v1 = make_client(PilotConfig(server=BASE))
    assert isinstance(v1, ApiV1Client) and v1.base_url == BASE
    run(v1.aclose())
    legacy = make_client(PilotConfig(server=BASE, api="legacy"))
    assert isinstance(legacy, LegacyClient) and legacy.base_url == BASE
    run(legacy.aclose())
    with pytest.raises(ValueError, match="dialect"):
        make_client(PilotConfig(server=BASE, api="v2"))
    with pytest.raises(ValueError, match="server"):
        make_client(PilotConfig())
