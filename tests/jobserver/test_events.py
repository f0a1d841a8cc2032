"""Event ranges on the local job server, over real HTTP: ``/api/v1/event/...``, ``/jobs/{id}/ranges``,
and the clients of both dialects against it.

Request and reply shapes are those of docs/protocol.md section 4 and panda-server's event_api.py
(``acquire_event_ranges(job_id: int, jobset_id: int, task_id: int | None = None, n_ranges: int = 10,
...)``, ``update_event_ranges(event_ranges: str, timeout: int = 120, version: int = 0)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nodepilot.jobserver.events import EventApi
from nodepilot.panda.api_v1 import ApiV1Client
from nodepilot.panda.legacy import LegacyClient
from tests.panda.serving import Server, serving, write_jobs


def event_range(n: int) -> dict[str, Any]:
    return {"eventRangeID": f"33-4242-1-{n}-1", "startEvent": 10 * (n - 1), "lastEvent": 10 * n - 1,
            "LFN": "EVNT.01.root", "GUID": "g-e", "scope": "mc"}


RANGES = [event_range(n) for n in range(1, 6)]
ES_JOB = {"PandaID": 4242, "attemptNr": 1, "jobsetID": 11, "taskID": 33, "eventService": "True",
          "transformation": "run.sh", "jobPars": "", "_event_ranges": RANGES}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(write_jobs(tmp_path / "jobs", a=ES_JOB), tmp_path / "server.sqlite") as running:
        yield running


def acquire(server: Server, n_ranges: int, job_id: int = 4242, jobset_id: int = 11) -> list[dict[str, Any]]:
    reply = server.call("acquire_event_ranges", {"job_id": job_id, "jobset_id": jobset_id, "task_id": 33,
                                                 "n_ranges": n_ranges}, module="event")
    assert reply["success"] is True, reply
    return reply["data"]


def report(server: Server, updates: list[dict[str, Any]], version: int = 0) -> dict[str, Any]:
    return server.call("update_event_ranges", {"event_ranges": json.dumps(updates), "version": version},
                       module="event")


def status(range_id: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"eventRangeID": range_id, "eventStatus": value, **extra}


def test_the_job_is_served_without_its_ranges_which_come_in_batches(server: Server):
    (job,) = server.call("acquire_jobs", {"site_name": "Q"})["data"]["jobs"]
    assert "_event_ranges" not in job and job["PandaID"] == 4242
    assert [r["eventRangeID"] for r in server.ranges(4242)] == [r["eventRangeID"] for r in RANGES]
    assert {r["status"] for r in server.ranges(4242)} == {"ready"}

    batches = [acquire(server, 2), acquire(server, 2), acquire(server, 2), acquire(server, 2)]
    assert batches == [RANGES[0:2], RANGES[2:4], RANGES[4:5], []]  # each range as in the definition
    assert [(r["status"], r["attempts"]) for r in server.ranges(4242)] == [("running", 1)] * 5


def test_updates_answer_per_range(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    acquire(server, 3)
    reply = report(server, [status(RANGES[0]["eventRangeID"], "finished"),
                            status(RANGES[1]["eventRangeID"], "failed", errorCode=1224),
                            status("no-such-range", "finished"),
                            status(RANGES[3]["eventRangeID"], "finished"),  # never handed out
                            status(RANGES[2]["eventRangeID"], "done")])  # not a status
    # version 0: both JSON-encoded, as the real server sends them
    assert reply == {"success": True, "message": "",
                     "data": {"Returns": "[true, true, false, false, false]", "Commands": '{"4242": null}'}}
    listed = {r["eventRangeID"]: r for r in server.ranges(4242)}
    assert listed[RANGES[0]["eventRangeID"]]["status"] == "finished"
    assert (listed[RANGES[1]["eventRangeID"]]["status"], listed[RANGES[1]["eventRangeID"]]["errorCode"]) == (
        "failed", 1224)
    assert listed[RANGES[2]["eventRangeID"]]["status"] == "running"
    # a retried call repeats a final status: taken; another status for a final range is not
    again = report(server, [status(RANGES[0]["eventRangeID"], "finished"), status(RANGES[0]["eventRangeID"], "failed")])
    assert json.loads(again["data"]["Returns"]) == [True, False]


def test_version_1_groups_ranges_per_zip_file(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    acquire(server, 2)
    update = [{"zipFile": {"lfn": "z.zip", "fsize": 10, "adler32": "0000000a", "numEvents": 20, "objstoreID": 7},
               "eventRanges": [status(r["eventRangeID"], "finished") for r in RANGES[:2]]}]
    assert report(server, update, version=1)["data"] == {"Returns": [True, True], "Commands": {"4242": None}}


def test_a_zip_record_without_objstore_id_is_refused_as_the_real_server_does(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    acquire(server, 3)
    update = [{"zipFile": {"lfn": "a.zip", "fsize": 10, "adler32": "0000000a", "numEvents": 20},
               "eventRanges": [status(r["eventRangeID"], "finished") for r in RANGES[:2]]},
              {"zipFile": {"lfn": "b.zip", "fsize": 10, "adler32": "0000000b", "numEvents": 10, "objstoreID": 7},
               "eventRanges": [status(RANGES[2]["eventRangeID"], "finished")]}]
    assert report(server, update, version=1)["data"]["Returns"] == [False, False, True]
    assert [r["status"] for r in server.ranges(4242)[:3]] == ["running", "running", "finished"]


def statuses(server: Server, pairs: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/event/get_event_range_statuses", params={"job_task_ids": json.dumps(pairs)},
                     headers={"Accept": "application/json"}, timeout=10)


def test_event_range_statuses_in_the_real_shape(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    acquire(server, 2)
    report(server, [status(RANGES[0]["eventRangeID"], "finished")])
    reply = statuses(server, [{"task_id": 33, "panda_id": 4242}])
    assert reply.status_code == 200 and reply.json()["success"] is True
    held = reply.json()["data"]["4242"]
    assert held[RANGES[0]["eventRangeID"]] == {"status": "finished", "error": None, "dialog": None}
    assert held[RANGES[1]["eventRangeID"]]["status"] == "sent" and held[RANGES[2]["eventRangeID"]]["status"] == "ready"
    # the documented key job_id fails in the real server's code: a database error
    assert statuses(server, [{"task_id": 33, "job_id": 4242}]).json() == {
        "success": False, "message": "database error in the PanDA server", "data": None}
    # a POST is refused, as the real server's request_validation does
    assert server.call("get_event_range_statuses", {"job_task_ids": "[]"}, module="event")["success"] is False


def test_the_1_0_4_bug_commits_the_update_then_answers_500(tmp_path: Path):
    with serving(write_jobs(tmp_path / "jobs", a=ES_JOB), tmp_path / "s.sqlite", "--event-update-500") as server:
        server.call("acquire_jobs", {"site_name": "Q"})
        acquire(server, 1)
        reply = server.post("update_event_ranges", {"event_ranges": json.dumps([
            status(RANGES[0]["eventRangeID"], "failed", errorCode=1224)]), "version": 0}, module="event")
        assert reply.status_code == 500 and "set" in reply.text
        assert server.ranges(4242)[0]["status"] == "failed"  # applied all the same


def test_failed_ranges_are_handed_out_again_three_attempts_at_most(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    assert acquire(server, 1) == [RANGES[0]]
    current = RANGES[0]["eventRangeID"]
    for attempt in (2, 3):  # each new attempt is a new range id: <task>-<panda>-<file>-<proc>-<attempt>
        report(server, [status(current, "failed", errorCode=1224)])
        again = acquire(server, 1)
        current = f"{RANGES[0]['eventRangeID'].rsplit('-', 1)[0]}-{attempt}"
        assert again == [{**RANGES[0], "eventRangeID": current}], f"attempt {attempt}"
    report(server, [status(current, "failed", errorCode=1224)])
    assert acquire(server, 1) == [RANGES[1]]  # the third failure was the last
    report(server, [status(RANGES[1]["eventRangeID"], "fatal")])  # fatal: never again
    assert [r["eventRangeID"] for r in acquire(server, 10)] == [r["eventRangeID"] for r in RANGES[2:]]
    listed = server.ranges(4242)
    assert [(r["status"], r["attempts"]) for r in listed[:2]] == [("failed", 3), ("fatal", 1)]


def test_no_ranges_for_unknown_or_other_jobs(server: Server):
    assert acquire(server, 5) == []  # not handed out yet
    server.call("acquire_jobs", {"site_name": "Q"})
    assert acquire(server, 5, jobset_id=12) == []  # not its jobset
    assert acquire(server, 5, job_id=1) == []
    assert server.post("x", None, module="event").status_code == 403
    assert httpx.get(f"{server.url}/jobs/1/ranges", timeout=10).status_code == 404


def test_ranges_of_a_finished_job_are_not_handed_out(server: Server):
    server.call("acquire_jobs", {"site_name": "Q"})
    server.call("update_job", {"job_id": 4242, "job_status": "failed"})
    assert acquire(server, 5) == []


@pytest.mark.parametrize(("method", "body", "message"), [
    ("acquire_event_ranges", {"job_id": "4242", "jobset_id": 11}, "Type error: 'job_id' must be of type int, got str."),
    ("acquire_event_ranges", {"job_id": 4242}, "Argument error: missing a required argument: 'jobset_id'"),
    ("acquire_event_ranges", {"job_id": 4242, "jobset_id": 11, "nRanges": 2},
     "Argument error: got an unexpected keyword argument 'nRanges'"),
    ("update_event_ranges", {"event_ranges": [{"eventRangeID": "x"}]},
     "Type error: 'event_ranges' must be of type str, got list."),
    ("update_event_ranges", {"event_ranges": "[{not json"}, "failed to load JSON"),
])
def test_parameters_are_checked(server: Server, method: str, body: dict[str, Any], message: str):
    assert server.call(method, body, module="event") == {"success": False, "message": message, "data": None}


def test_the_signatures_are_those_of_the_real_server():
    expected = {
        "acquire_event_ranges": ["job_id", "jobset_id", "task_id", "n_ranges", "timeout", "scattered", "segment_id"],
        "update_event_ranges": ["event_ranges", "timeout", "version"],
        "get_event_range_statuses": ["job_task_ids"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(EventApi, name)).parameters)[1:] == params


# --- the clients against the server ---------------------------------------------------------------
ClientFactory = Callable[[str], Any]


@contextlib.asynccontextmanager
async def opened(client: Any) -> Any:
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.parametrize("make", [
    lambda url: ApiV1Client(url, timeout=10, retries=1, backoff_s=0.01),
    lambda url: LegacyClient(url, timeout=10, retries=1, backoff_s=0.01),
    lambda url: LegacyClient(url, timeout=10, retries=1, backoff_s=0.01, json_body=True),
], ids=["v1", "legacy-form", "legacy-json"])
def test_an_event_service_pilot(server: Server, make: ClientFactory):
    async def pilot() -> tuple[Any, ...]:
        async with opened(make(server.url)) as client:
            job = await client.acquire_job({"siteName": "LOCAL_TEST", "node": "wn01"})
            ranges = []
            while batch := await client.acquire_event_ranges(int(job["PandaID"]), int(job["jobsetID"]),
                                                             int(job["taskID"]), 2):
                ranges += batch
                assert len(ranges) <= len(RANGES), "ranges handed out twice"
            zip_file = {"lfn": "z.zip", "fsize": 10, "adler32": "0000000a", "numEvents": 40, "objstoreID": 7}
            zipped = [{"zipFile": zip_file,
                       "eventRanges": [status(r["eventRangeID"], "finished") for r in ranges[:4]]}]
            done = await client.update_event_ranges(zipped)
            failed = await client.update_event_ranges([status(ranges[4]["eventRangeID"], "failed", errorCode=1224)],
                                                      version=0)
            final = await client.update_job({"jobId": job["PandaID"], "state": "finished", "attemptNr": 1})
            return job, ranges, done, failed, final

    job, ranges, done, failed, final = asyncio.run(asyncio.wait_for(pilot(), 60))
    assert "_event_ranges" not in job and ranges == RANGES
    assert done["Returns"] == [True] * 4 and failed["Returns"] == [True]
    assert list(done["Commands"].values()) == [None] and final.command is None
    assert [r["status"] for r in server.ranges(4242)] == ["finished"] * 4 + ["failed"]
