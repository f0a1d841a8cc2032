"""LegacyClient against hand-written exchanges of the legacy API (``/server/panda/<method>``).

Replies are written from pandaserver/jobdispatcher/Protocol.py (``Response.encode``: JSON when the
request accepts it, else ``urlencode(data)``) and JobDispatcher.py, not recorded from our output.
"""

from __future__ import annotations

import gzip
import json
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import pytest

from nodepilot.job import parse_job
from nodepilot.panda.errors import ServerError
from nodepilot.panda.legacy import LegacyClient
from tests.panda.mock import BASE, Recorder, run, text

FORM = "application/x-www-form-urlencoded"
# a getJob reply without nJobs, URL-encoded: the job's fields at the top level, every value a string
JOB_URLENCODED = (b"StatusCode=0&PandaID=4242&prodSourceLabel=managed&swRelease=Atlas-25.0&homepackage=NULL"
                  b"&transformation=run.sh&jobName=test.job&jobDefinitionID=7&inFiles=a.root&outFiles=job.log.tgz"
                  b"&logFile=job.log.tgz&jobPars=--in+a+--out+b&attemptNr=2&GUID=g-a&checksum=ad%3A0000000a"
                  b"&fsize=10&scopeIn=mc&scopeOut=&scopeLog=mc&maxCpuCount=3600&minRamCount=2000"
                  b"&maxDiskCount=5000&coreCount=8&jobsetID=11&taskID=33&maxWalltime=7200&nSent=0")
JOB_JSON = (b'{"StatusCode": 0, "PandaID": 4242, "prodSourceLabel": "managed", "transformation": "run.sh",'
            b' "jobName": "test.job", "inFiles": "a.root", "outFiles": "job.log.tgz", "logFile": "job.log.tgz",'
            b' "jobPars": "--in a --out b", "attemptNr": 2, "GUID": "g-a", "checksum": "ad:0000000a",'
            b' "fsize": "10", "scopeIn": "mc", "coreCount": 8, "jobsetID": 11, "taskID": 33, "nSent": 0}')
RANGES = [{"eventRangeID": "33-4242-1-1-1", "startEvent": 0, "lastEvent": 9, "LFN": "EVNT.01.root",
           "GUID": "g-e", "scope": "mc"},
          {"eventRangeID": "33-4242-1-2-1", "startEvent": 10, "lastEvent": 19, "LFN": "EVNT.01.root",
           "GUID": "g-e", "scope": "mc"}]


def form(request: httpx.Request) -> dict[str, str]:
    """A form body as the server reads it: one string per name."""
    parsed = parse_qs(request.content.decode(), keep_blank_values=True)
    assert all(len(values) == 1 for values in parsed.values())
    return {name: values[0] for name, values in parsed.items()}


# --- requests -------------------------------------------------------------------------------------
UPDATE_FIELDS: dict[str, Any] = {
    "jobId": 4242, "state": "finished", "timestamp": "2026-01-01T10:00:00", "siteName": "LOCAL_TEST",
    "node": "wn01", "attemptNr": 2, "schedulerID": "nodepilot", "pilotID": "nodepilot|SLURM|PR|0.1.0",
    "batchID": "98765", "startTime": "2026-01-01 10:00:00", "endTime": "2026-01-01 11:00:00", "coreCount": 8,
    "cpuConsumptionTime": 1234.6, "cpuConsumptionUnit": "s", "cpuConversionFactor": 1.5, "maxRSS": 2048.0,
    "nEvents": "10", "pilotErrorCode": 0, "pilotErrorDiag": None, "transExitCode": 0, "exeErrorCode": 0,
    "pilotTiming": "1|2|3|4|5|6", "metaData": {"exitCode": 0}, "xml": '{"out.root": {"guid": "g1"}}',
    "jobMetrics": "coreCount=8", "someFutureField": "x",
}


def test_update_is_a_form_with_the_legacy_names():
    rec = Recorder(text(b"StatusCode=0&command=NULL"))
    reply = run(rec.legacy().update_job(UPDATE_FIELDS))

    request = rec.requests[0]
    assert request.method == "POST" and request.url == f"{BASE}/server/panda/updateJob"
    assert request.headers["Content-Type"] == FORM and request.headers["Accept"] == "application/json"
    assert "Content-Encoding" not in request.headers
    assert form(request) == {
        "jobId": "4242", "state": "finished", "timestamp": "2026-01-01T10:00:00", "siteName": "LOCAL_TEST",
        "node": "wn01", "attemptNr": "2", "schedulerID": "nodepilot", "pilotID": "nodepilot|SLURM|PR|0.1.0",
        "batchID": "98765", "startTime": "2026-01-01 10:00:00", "endTime": "2026-01-01 11:00:00", "coreCount": "8",
        "cpuConsumptionTime": "1235", "cpuConsumptionUnit": "s", "cpuConversionFactor": "1.5", "maxRSS": "2048",
        "nEvents": "10", "pilotErrorCode": "0", "transExitCode": "0", "exeErrorCode": "0",
        "pilotTiming": "1|2|3|4|5|6", "metaData": '{"exitCode": 0}', "xml": '{"out.root": {"guid": "g1"}}',
        "jobMetrics": "coreCount=8",
    }  # None and names the server's updateJob does not take are not sent
    assert (reply.command, reply.status_code) == (None, 0)


def test_update_as_gzipped_json_keeps_numbers():
    rec = Recorder(text(b'{"StatusCode": 0, "command": "NULL"}'))
    run(rec.legacy(json_body=True).update_job(UPDATE_FIELDS))

    request = rec.requests[0]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Encoding"] == "gzip" and request.headers["Accept"] == "application/json"
    body = json.loads(gzip.decompress(request.content))
    assert body["jobId"] == 4242 and body["attemptNr"] == 2 and body["nEvents"] == "10"
    assert body["cpuConsumptionTime"] == 1235 and body["maxRSS"] == 2048 and body["cpuConversionFactor"] == 1.5
    assert body["metaData"] == '{"exitCode": 0}' and "someFutureField" not in body and "pilotErrorDiag" not in body


def test_acquire_request_and_a_urlencoded_job():
    rec = Recorder(text(JOB_URLENCODED))
    params = {"siteName": "LOCAL_TEST", "computingElement": "LOCAL_CE", "prodSourceLabel": "managed",
              "diskSpace": 20480, "mem": 3999.6, "cpu": 2400, "node": "wn01", "resourceType": None,
              "remaining_time": 3600}
    job = run(rec.legacy().acquire_job(params))

    assert rec.requests[0].url == f"{BASE}/server/panda/getJob"
    assert form(rec.requests[0]) == {"siteName": "LOCAL_TEST", "computingElement": "LOCAL_CE",
                                     "prodSourceLabel": "managed", "diskSpace": "20480", "mem": "4000",
                                     "cpu": "2400", "node": "wn01"}
    assert job["PandaID"] == "4242" and job["coreCount"] == "8" and job["scopeOut"] == ""  # a flat map of strings
    parsed = parse_job(job)
    assert (parsed.panda_id, parsed.attempt_nr, parsed.core_count) == (4242, 2, 8)


def test_a_json_job():
    job = run(Recorder(text(JOB_JSON, **{"Content-Type": "application/json"})).legacy().acquire_job({"siteName": "Q"}))
    assert job["PandaID"] == 4242 and job["jobPars"] == "--in a --out b"


@pytest.mark.parametrize("reply", [b"StatusCode=20", b'{"StatusCode": 20, "errorDialog": "no jobs in PanDA"}'])
def test_status_code_20_is_no_job(reply: bytes):
    assert run(Recorder(text(reply)).legacy().acquire_job({"siteName": "Q"})) is None


@pytest.mark.parametrize("reply", [
    b'{"StatusCode": 0, "jobs": [{"StatusCode": 0, "PandaID": 1, "nSent": 0}, {"StatusCode": 0, "PandaID": 2}]}',
    b"StatusCode=0&jobs=" + quote('[{"StatusCode": 0, "PandaID": 1}, {"StatusCode": 0, "PandaID": 2}]').encode(),
])
def test_jobs_of_a_bulk_reply_are_all_run(reply: bytes):
    rec = Recorder(text(reply), text(b"StatusCode=20"))

    async def three() -> list[Any]:
        client = rec.legacy()
        return [await client.acquire_job({"siteName": "Q", "nJobs": 2}) for _ in range(3)]

    first, second, third = run(three())
    assert (first["PandaID"], second["PandaID"], third) == (1, 2, None)
    assert len(rec.requests) == 2 and form(rec.requests[0])["nJobs"] == "2"


@pytest.mark.parametrize(("reply", "command"), [
    (b"StatusCode=0&command=NULL", None), (b"StatusCode=0&command=tobekilled", "tobekilled"),
    (b'{"StatusCode": 0, "command": "softkill"}', "softkill"), (b"StatusCode=0&command=badattemptnr", "tobekilled"),
    (b'{"StatusCode": 0, "command": "debug", "pilotSecrets": "{}"}', "debug"),
])
def test_update_commands(reply: bytes, command: str | None):
    assert run(Recorder(text(reply)).legacy().update_job({"jobId": 1, "state": "running"})).command == command


# --- refusals and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("reply", [
    b"StatusCode=60",
    b'{"StatusCode": 60, "errorDialog": "no production/pilot role in VOMS FQANs or non pilot owner"}',
    b"StatusCode=50",
    b"production or pilot role is required",  # what getEventRanges and friends answer, as plain text
])
def test_refusals_are_not_retried(reply: bytes):
    rec = Recorder(text(reply))
    with pytest.raises(ServerError) as err:
        run(rec.legacy().update_job({"jobId": 1, "state": "running"}))
    assert not err.value.retryable and len(rec.requests) == 1
    assert err.value.refused  # the pilot's credentials or role: final, for every call


def test_a_server_without_the_legacy_api_says_use_api_v1():
    """panda-server without its legacy API answers every legacy call HTTP 403 "method <m> is
    forbidden": not a credential problem, and the other dialect is the cure."""
    rec = Recorder(text(b"ERROR : method getJob is forbidden", 403))
    with pytest.raises(ServerError) as err:
        run(rec.legacy().acquire_job({"siteName": "Q"}))
    message = str(err.value)
    assert err.value.refused and not err.value.retryable and len(rec.requests) == 1
    assert "no legacy API" in message and "--api v1" in message and "credential" not in message
    v1 = Recorder(text(b"ERROR : method acquire_jobs is forbidden", 403))
    with pytest.raises(ServerError) as err:
        run(v1.client().acquire_job({"siteName": "Q"}))
    assert err.value.refused and "--api legacy" in str(err.value)


@pytest.mark.parametrize("reply", [b"StatusCode=10", b"StatusCode=30", b'{"StatusCode": 30}'])
def test_time_outs_and_failures_are_retryable(reply: bytes):
    with pytest.raises(ServerError) as err:
        run(Recorder(text(reply)).legacy().update_job({"jobId": 1, "state": "finished"}))
    assert err.value.retryable


@pytest.mark.parametrize("reply", [b"", b"<html>502 Bad Gateway</html>", b'{"command": "NULL"}', b"StatusCode=zero",
                                   b'{"StatusCode": 0, "jobs": "not a list"}'])
def test_garbled_replies_are_errors(reply: bytes):
    with pytest.raises(ServerError):
        run(Recorder(text(reply)).legacy().acquire_job({"siteName": "Q", "nJobs": 1}))


def test_an_invalid_state_is_refused_before_sending():
    """The legacy server acknowledges an update with an invalid state and drops it: never send one."""
    rec = Recorder(text(b"StatusCode=0"))
    with pytest.raises(ServerError) as err:
        run(rec.legacy().update_job({"jobId": 1, "state": "done"}))
    assert not err.value.retryable and rec.requests == []
    with pytest.raises(ServerError):
        run(rec.legacy().update_job({"state": "running"}))
    with pytest.raises(ServerError):
        run(rec.legacy().acquire_job({"node": "wn01"}))
    assert rec.requests == []


def test_500_is_retried_then_an_error():
    rec = Recorder(text(b"updateJob() got an unexpected keyword argument 'x'", 500))
    with pytest.raises(ServerError) as err:
        run(rec.legacy(retries=2).update_job({"jobId": 1, "state": "running"}))
    assert err.value.retryable and "500" in str(err.value) and len(rec.requests) == 3


def test_base_url_may_end_in_server_panda():
    rec = Recorder(text(b"StatusCode=20"))
    run(LegacyClient(BASE + "/server/panda/", transport=httpx.MockTransport(rec)).acquire_job({"siteName": "Q"}))
    assert str(rec.requests[0].url) == f"{BASE}/server/panda/getJob"


# --- event ranges -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", [
    b"StatusCode=0&eventRanges=" + quote(json.dumps(RANGES)).encode(),
    json.dumps({"StatusCode": 0, "eventRanges": RANGES}).encode(),
])
def test_get_event_ranges(reply: bytes):
    rec = Recorder(text(reply))
    ranges = run(rec.legacy().acquire_event_ranges(4242, 11, 33, 2))
    assert ranges == RANGES
    assert rec.requests[0].url == f"{BASE}/server/panda/getEventRanges"
    assert form(rec.requests[0]) == {"pandaID": "4242", "jobsetID": "11", "taskID": "33", "nRanges": "2"}


def test_no_more_event_ranges():
    rec = Recorder(text(b"StatusCode=0&eventRanges=%5B%5D"))
    assert run(rec.legacy(json_body=True).acquire_event_ranges(4242, 11, None, 5)) == []
    assert json.loads(gzip.decompress(rec.requests[0].content)) == {"pandaID": 4242, "jobsetID": 11, "nRanges": 5}


@pytest.mark.parametrize(("reply", "expected"), [
    # version 0: the server JSON-encodes both; legacy calls the commands "Command"
    (b"StatusCode=0&Returns=" + quote("[true, false]").encode() + b"&Command=" + quote('{"4242": null}').encode(),
     {"Returns": [True, False], "Commands": {"4242": None}}),
    # version 1 URL-encoded: urlencode() wrote Python's str() of the list and the dict
    (b"StatusCode=0&Returns=" + quote("[True, False]").encode() + b"&Command=" + quote("{4242: None}").encode(),
     {"Returns": [True, False], "Commands": {4242: None}}),
    (b'{"StatusCode": 0, "Returns": [true, false], "Command": {"4242": "softkill"}}',
     {"Returns": [True, False], "Commands": {"4242": "softkill"}}),
])
def test_update_event_ranges(reply: bytes, expected: dict[str, Any]):
    rec = Recorder(text(reply))
    update = [{"zipFile": {"lfn": "z.zip", "fsize": 10, "adler32": "0000000a", "numEvents": 20},
               "eventRanges": [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in RANGES]}]
    assert run(rec.legacy().update_event_ranges(update)) == expected
    sent = form(rec.requests[0])
    assert sent["version"] == "1" and json.loads(sent["eventRanges"]) == update  # a JSON string
