"""Event ranges through the new API (``event/acquire_event_ranges``, ``event/update_event_ranges``)
and in standalone mode, against hand-written exchanges (docs/protocol.md section 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodepilot.panda.errors import ServerError
from nodepilot.panda.standalone import StandaloneClient
from tests.panda.mock import BASE, Recorder, run, text

RANGES = [{"eventRangeID": "33-4242-1-1-1", "startEvent": 0, "lastEvent": 9, "LFN": "EVNT.01.root",
           "GUID": "g-e", "scope": "mc"}]
ZIP_UPDATE = [{"zipFile": {"lfn": "z.zip", "fsize": 10, "adler32": "0000000a", "numEvents": 10},
               "eventRanges": [{"eventRangeID": "33-4242-1-1-1", "eventStatus": "finished"},
                               {"eventRangeID": "33-4242-1-2-1", "eventStatus": "finished"}]}]
UPDATE_OK = b'{"success": true, "message": "", "data": {"Returns": "[true, true]", "Commands": "{\\"4242\\": null}"}}'
DECODED = {"Returns": [True, True], "Commands": {"4242": None}}


def test_acquire_request_and_reply():
    reply = json.dumps({"success": True, "message": "", "data": RANGES}).encode()
    rec = Recorder(text(reply))
    assert run(rec.client().acquire_event_ranges(4242, 11, 33, 5)) == RANGES
    request = rec.requests[0]
    assert request.url == f"{BASE}/api/v1/event/acquire_event_ranges"
    assert request.headers["Accept"] == "application/json" and request.headers["Content-Type"] == "application/json"
    assert json.dumps(rec.body(), sort_keys=True) == json.dumps(
        {"job_id": 4242, "jobset_id": 11, "task_id": 33, "n_ranges": 5}, sort_keys=True)


def test_acquire_without_task_and_none_left():
    rec = Recorder(text(b'{"success": true, "message": "", "data": []}'))
    assert run(rec.client().acquire_event_ranges(4242, 11, None, 5)) == []
    assert "task_id" not in rec.body()


@pytest.mark.parametrize(("reply", "retryable"), [
    (b'{"success": false, "message": "production or pilot role required", "data": null}', False),
    (b'{"success": false, "message": "TimeOut", "data": null}', True),
    (b'{"success": false, "message": "database error in the PanDA server", "data": null}', True),
    (b'{"success": true, "message": "", "data": {"eventRangeID": "x"}}', True),
])
def test_acquire_refused_or_garbled(reply: bytes, retryable: bool):
    with pytest.raises(ServerError) as err:
        run(Recorder(text(reply)).client().acquire_event_ranges(4242, 11, None, 5))
    assert err.value.retryable is retryable


@pytest.mark.parametrize("reply", [
    UPDATE_OK,  # version 0 style: both JSON-encoded
    b'{"success": true, "message": "", "data": {"Returns": [true, true], "Commands": {"4242": null}}}',
])
def test_update_request_and_decoded_reply(reply: bytes):
    rec = Recorder(text(reply))
    assert run(rec.client().update_event_ranges(ZIP_UPDATE)) == DECODED
    body = rec.body()
    assert rec.requests[0].url == f"{BASE}/api/v1/event/update_event_ranges"
    assert set(body) == {"event_ranges", "version"} and body["version"] == 1
    assert isinstance(body["event_ranges"], str) and json.loads(body["event_ranges"]) == ZIP_UPDATE


def test_update_refused():
    refused = b'{"success": false, "message": "production or pilot role required", "data": null}'
    rec = Recorder(text(refused))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_event_ranges(ZIP_UPDATE, version=1))
    assert not err.value.retryable and len(rec.requests) == 1


def test_update_of_something_not_a_list_is_refused_before_sending():
    rec = Recorder(text(UPDATE_OK))
    with pytest.raises(ServerError):
        run(rec.client().update_event_ranges({"eventRangeID": "x"}))  # type: ignore[arg-type]
    assert rec.requests == []


# --- panda-server 1.0.4: the update is committed, then the reply fails with HTTP 500 ------------------
def test_a_500_on_an_update_is_not_sent_again_blindly():
    """Re-sending would re-apply what the server may have stored: the caller checks the statuses."""
    rec = Recorder(text(b"Object of type set is not JSON serializable", 500), text(UPDATE_OK))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_event_ranges(ZIP_UPDATE))
    assert len(rec.requests) == 1 and rec.requests[0].headers["Accept"] == "application/json"
    assert "500" in str(err.value)


def test_event_range_statuses_request_and_reply():
    data = {"4242": {"33-4242-1-1-1": {"status": "finished", "error": None, "dialog": None},
                     "33-4242-1-2-1": {"status": "sent", "error": None, "dialog": None}}}
    rec = Recorder(text(json.dumps({"success": True, "message": "", "data": data}).encode()))
    assert run(rec.client().get_event_range_statuses(4242, 33)) == data["4242"]
    request = rec.requests[0]
    assert request.method == "GET" and request.url.path == "/api/v1/event/get_event_range_statuses"
    # the key the server's code reads is panda_id (its docstring says job_id, which fails there)
    assert json.loads(request.url.params["job_task_ids"]) == [{"task_id": 33, "panda_id": 4242}]
    assert request.headers["Accept"] == "application/json"


def test_event_range_statuses_of_a_job_without_ranges_and_garbled():
    rec = Recorder(text(b'{"success": true, "message": "", "data": {"4242": {}}}'),
                   text(b'{"success": true, "message": "", "data": {"4242": ["x"]}}'))
    client = rec.client()
    assert run(client.get_event_range_statuses(4242, 33)) == {}
    with pytest.raises(ServerError):
        run(client.get_event_range_statuses(4242, 33))


def test_other_http_errors_are_not_taken_for_the_bug():
    rec = Recorder(text(b"ERROR : method x is forbidden", 403))
    with pytest.raises(ServerError) as err:
        run(rec.client().update_event_ranges(ZIP_UPDATE))
    assert not err.value.retryable and len(rec.requests) == 1


# --- standalone -----------------------------------------------------------------------------------
def test_standalone_event_ranges(tmp_path: Path):
    updates = tmp_path / "updates.jsonl"
    client = StandaloneClient(tmp_path / "job.json", updates)
    assert run(client.acquire_event_ranges(4242, 11, 33, 10)) == []
    assert run(client.update_event_ranges(ZIP_UPDATE)) == {"Returns": [True, True], "Commands": None}
    single = [{"eventRangeID": "33-4242-1-1-1", "eventStatus": "failed", "errorCode": 1224}]
    assert run(client.update_event_ranges(single, version=0)) == {"Returns": [True], "Commands": None}
    lines = [json.loads(line) for line in updates.read_text().splitlines()]
    assert [(line["event_ranges"], line["version"]) for line in lines] == [(ZIP_UPDATE, 1), (single, 0)]
