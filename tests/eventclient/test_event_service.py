"""The eventclient and the real stager as processes on a real Redis; the test plays the monitor
and runs examples/es_payload.py against the job's events socket. The source is a ranges file."""

from __future__ import annotations

import contextlib
import zlib

from nodepilot.errors import ErrorCode
from nodepilot.http import uds_client
from tests.conftest import running_service
from tests.eventclient.helpers import (
    EVENTS_PER_RANGE,
    JOB,
    N_RANGES,
    assert_reported_once,
    begin,
    end,
    finish,
    ids,
    make_ranges,
    reports,
    run_payload,
    se_file,
    start,
    start_payload,
    wait_event,
    workdir,
)
from tests.waiting import wait_until


def test_payload_processes_every_range(rds, pilot_config, stager, files):
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        proc = run_payload(sock, workdir(pilot_config, JOB))
        assert proc.returncode == 0, proc.stderr
        done = end(rds)
    assert done["error_code"] == 0 and done["n_ranges"] == N_RANGES
    assert (done["finished"], done["failed"], done["unreported"]) == (N_RANGES, 0, 0)
    assert done["n_events"] == N_RANGES * EVENTS_PER_RANGE
    assert len(done["files"]) == N_RANGES and all(f["status"] == "done" for f in done["files"])
    assert_reported_once(files[1], ids(*range(N_RANGES)), {})
    wd = workdir(pilot_config, JOB)
    for items in reports(files[1]).values():
        zip_file = items[0]["zip"]
        stored = se_file(pilot_config, zip_file["lfn"]).read_bytes()
        assert zip_file["fsize"] == len(stored) and zip_file["numEvents"] == EVENTS_PER_RANGE
        assert zip_file["adler32"] == f"{zlib.adler32(stored) & 0xFFFFFFFF:08x}"
        assert not (wd / zip_file["lfn"]).exists(), "a staged output was left in the work dir"
    assert not (wd / "events.sock").exists()


def test_failed_ranges_are_reported_failed(rds, pilot_config, stager, files):
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        proc = run_payload(sock, workdir(pilot_config, JOB), "--fail-every", "5", "--n", "3")
        assert proc.returncode == 0, proc.stderr
        done = end(rds)
    every_fifth = {i for i in range(N_RANGES) if (i + 1) % 5 == 0}
    assert (done["finished"], done["failed"], done["error_code"]) == (40, 10, 0)
    assert_reported_once(files[1], ids(*(set(range(N_RANGES)) - every_fifth)),
                         dict.fromkeys(ids(*every_fifth), ErrorCode.ES_RECOVERABLE))


def test_killed_eventclient_carries_on_after_restart(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config) as eventclient:
        sock = begin(rds, pilot_config, files)["socket"]
        first_ready = rds.xrevrange(f"job:{JOB}:events", count=1)[0][0]
        payload = start_payload(sock, wd, "--sleep", "0.05", "--n", "2")
        try:
            wait_until(lambda: len(reports(files[1])) >= 12, what="a few ranges reported")
            eventclient.kill()  # SIGKILL: no goodbye
            eventclient.wait(10)
            assert len(reports(files[1])) < N_RANGES, "the job was over before the kill"
        except BaseException:
            payload.kill()
            raise
    try:
        with running_service("eventclient", pilot_config):
            again = wait_event(rds, JOB, "es_ready", f"{JOB}:0:es-start", after=first_ready)[1]
            assert again["socket"] == sock  # the pending start, delivered again: the same API reopened
            _, out_err = payload.communicate(timeout=90)
            assert payload.returncode == 0, out_err
            done = end(rds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            payload.kill()
    assert (done["n_ranges"], done["finished"], done["failed"], done["error_code"]) == (N_RANGES, N_RANGES, 0, 0)
    assert_reported_once(files[1], ids(*range(N_RANGES)), {})
    assert not list(wd.glob("out_*.dat"))


def test_finish_reports_ranges_still_held_as_failed(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config), \
            uds_client(pilot_config.socket_path("eventclient")) as service:
        sock = begin(rds, pilot_config, files)["socket"]
        with uds_client(sock) as api:
            taken = [r["eventRangeID"] for r in api.post("/ranges", params={"n": 5}).json()["ranges"]]
            assert taken == sorted(ids(0, 1, 2, 3, 4))
            for rid in taken[:2]:
                (wd / f"o_{rid}").write_bytes(b"x" * 100)
                assert api.post(f"/ranges/{rid}/done", json={"output": f"o_{rid}"}).status_code == 200
            assert api.post(f"/ranges/{taken[0]}/failed", json={}).status_code == 409
            assert api.post("/ranges/nosuchrange/failed", json={}).status_code == 404
            assert api.post(f"/ranges/{taken[2]}/done", json={"output": "../escape"}).status_code == 400
            (wd / "link.dat").symlink_to("/etc/passwd")  # a payload must not ship the node's files out
            assert api.post(f"/ranges/{taken[2]}/done", json={"output": "link.dat"}).status_code == 400
            assert api.post(f"/ranges/{taken[2]}/done", json={"output": "missing.dat"}).status_code == 400
            job = service.get("/status").json()["jobs"][str(JOB)]
            assert job["counts"]["running"] == 3 and job["counts"]["ready"] == 5 and job["ranges_per_s"] > 0
        done = end(rds, "the job is being stopped")
    # 2 finished; 3 handed out and 5 fetched but never handed out: failed with 1224
    assert (done["n_ranges"], done["finished"], done["failed"], done["error_code"]) == (10, 2, 8, 0)
    assert_reported_once(files[1], set(taken[:2]), dict.fromkeys(ids(*range(2, 10)), ErrorCode.ES_RECOVERABLE))


def test_softkill_stops_handing_out_ranges(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        with uds_client(sock) as api:
            taken = [r["eventRangeID"] for r in api.post("/ranges", params={"n": 2}).json()["ranges"]]
            assert api.post("/softkill").json()["softkill"] is True
            assert api.post("/ranges").json() == {"ranges": []}
            (wd / "out_a").write_bytes(b"a" * 10)
            assert api.post(f"/ranges/{taken[0]}/done", json={"output": "out_a"}).status_code == 200
            assert api.get("/ranges").json()["softkill"] is True
        done = end(rds)
    assert (done["finished"], done["failed"]) == (1, 9)
    assert_reported_once(files[1], {taken[0]}, dict.fromkeys(ids(*range(1, 10)), ErrorCode.ES_RECOVERABLE))


def test_finish_with_softkill_lets_running_ranges_end(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        with uds_client(sock) as api:
            (rid,) = [r["eventRangeID"] for r in api.post("/ranges").json()["ranges"]]
            finish_id = finish(rds, JOB, "softkill")
            wait_until(lambda: api.get("/ranges").json()["softkill"], what="softkill")
            assert api.post("/ranges").json()["ranges"] == []
            (wd / "late.dat").write_bytes(b"late")
            assert api.post(f"/ranges/{rid}/done", json={"output": "late.dat"}).status_code == 200
        done = wait_event(rds, JOB, "es_done", finish_id)[1]
    assert (done["finished"], done["failed"], done["reason"]) == (1, 9, "softkill")
    assert [f["lfn"] for f in done["files"]] == ["late.dat"]


def test_no_ranges_at_all(rds, pilot_config, stager, tmp_path):
    ranges_file, report_file = tmp_path / "ranges.json", tmp_path / "reports.jsonl"
    make_ranges(ranges_file, JOB, 0)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, (ranges_file, report_file))["socket"]
        proc = run_payload(sock, workdir(pilot_config, JOB))
        assert proc.returncode == 0, proc.stderr
        done = end(rds)
        again = end(rds, request_id="again")  # a second finish gets the same answer
        assert {k: v for k, v in again.items() if k != "request_id"} == {
            k: v for k, v in done.items() if k != "request_id"}
    assert (done["n_ranges"], done["error_code"]) == (0, ErrorCode.ES_NO_EVENTS)
    assert not report_file.exists()


def test_malformed_start_is_refused(rds, pilot_config, files):
    with running_service("eventclient", pilot_config):
        request_id = start(rds, pilot_config, JOB, *files, scope_out="")
        _, ready = wait_event(rds, JOB, "es_ready", request_id)
        assert ready["ok"] is False and ready["error_code"] == ErrorCode.ES_FATAL
        assert "scope_out" in ready["diag"]
        done = end(rds)
    assert done["error_code"] == ErrorCode.ES_FATAL


def test_a_stopped_eventclient_ends_its_jobs_first(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config) as eventclient:
        sock = begin(rds, pilot_config, files)["socket"]
        with uds_client(sock) as api:
            taken = [r["eventRangeID"] for r in api.post("/ranges", params={"n": 3}).json()["ranges"]]
            (wd / "first.dat").write_bytes(b"1" * 10)
            assert api.post(f"/ranges/{taken[0]}/done", json={"output": "first.dat"}).status_code == 200
        eventclient.terminate()
        assert eventclient.wait(30) == 0
    stopped = wait_event(rds, JOB, "es_done", f"{JOB}:0:es-start")[1]
    assert (stopped["finished"], stopped["failed"], stopped["reason"]) == (1, 9, "the eventclient is stopping")
    with running_service("eventclient", pilot_config):  # the monitor's finish, later, gets the same account
        done = end(rds)
    assert (done["finished"], done["failed"], done["files"]) == (1, 9, stopped["files"])
    assert_reported_once(files[1], {taken[0]}, dict.fromkeys(ids(*range(1, 10)), ErrorCode.ES_RECOVERABLE))
    assert not (wd / "events.sock").exists()


def test_a_deep_work_dir_still_gets_its_socket(rds, pilot_config, stager, files, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    pilot_config.work_dir = str(deep)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        assert len(sock) > 108
        proc = run_payload(sock, workdir(pilot_config, JOB), "--n", "7")
        assert proc.returncode == 0, proc.stderr
        done = end(rds)
    assert (done["finished"], done["error_code"]) == (N_RANGES, 0)


def test_http_api_details(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files)["socket"]
        with uds_client(sock) as api:
            (first,) = api.post("/ranges").json()["ranges"]
            (wd / "a.dat").write_bytes(b"a")
            # the report and the next ranges in one call
            answer = api.post(f"/ranges/{first['eventRangeID']}/done", json={"output": "a.dat", "next": 2}).json()
            assert answer["state"] == "done" and [r["eventRangeID"] for r in answer["ranges"]] == sorted(ids(1, 2))
            assert api.post("/ranges", params={"n": 0}).status_code == 422
            assert api.post("/ranges", params={"n": "x"}).status_code == 422
            assert api.post(f"/ranges/{first['eventRangeID']}/done", content=b"{not json").status_code == 422
            assert api.post(f"/ranges/{first['eventRangeID']}/done", json={"output": "a.dat", "next": -1}
                            ).status_code == 422
            assert api.get("/ranges/x/done").status_code == 405
            assert api.post("/nowhere").status_code == 404
            assert api.post("/ranges/x/done", json={"output": "b.dat"}).status_code == 404
            assert api.get("/ranges").json()["counts"]["running"] == 2
        done = end(rds)
    assert (done["finished"], done["failed"]) == (1, 9)
