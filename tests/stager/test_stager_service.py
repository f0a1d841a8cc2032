"""The stager as a real process on a real Redis; the test plays the monitor."""

from __future__ import annotations

import hashlib
import tarfile
import time
import zlib
from pathlib import Path

import redis

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.http import uds_client
from services.stager.paths import deterministic_path
from tests.conftest import read_events, running_service


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def se_endpoint(cfg: PilotConfig) -> dict[str, str]:
    return {"name": "LOCAL_SE", "url": Path(cfg.se_dir).resolve().as_uri()}


def se_file(cfg: PilotConfig, scope: str, lfn: str) -> Path:
    return Path(cfg.se_dir) / deterministic_path(scope, lfn)


def put_on_se(cfg: PilotConfig, scope: str, lfn: str, data: bytes) -> None:
    path = se_file(cfg, scope, lfn)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def workdir(cfg: PilotConfig, job_id: int) -> Path:
    path = Path(cfg.work_dir) / f"PanDA_Pilot-{job_id}"
    path.mkdir(exist_ok=True)
    return path


def send(rds: redis.Redis, cfg: PilotConfig, kind: str, job_id: int, request_id: str,
         endpoints: list[dict[str, str]] | None = None, **fields) -> dict:
    message = {"kind": kind, "job_id": job_id, "request_id": request_id,
               "workdir": str(workdir(cfg, job_id)),
               "endpoints": [se_endpoint(cfg)] if endpoints is None else endpoints, **fields}
    rds.xadd(bus.STAGER_REQUESTS, bus.encode(message))
    return message


def answer(rds: redis.Redis, job_id: int, kind: str) -> dict:
    event = read_events(rds, job_id, {f"{kind}_done"}, timeout=30)[-1]
    assert event["service"] == "stager"
    return event


def in_file(lfn: str, data: bytes, checksum: str | None = None, scope: str = "demo.data") -> dict:
    return {"lfn": lfn, "scope": scope, "guid": f"g-{lfn}", "fsize": len(data),
            "checksum": checksum if checksum is not None else f"ad:{adler32(data)}",
            "ddm_endpoint": "LOCAL_SE", "dataset": "ds"}


def out_file(lfn: str, scope: str = "demo.output", ddm: str = "LOCAL_SE") -> dict:
    return {"lfn": lfn, "scope": scope, "guid": f"g-{lfn}", "dataset": "ds", "ddm_endpoint": ddm}


def wait_all_acked(rds: redis.Redis, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while rds.xpending(bus.STAGER_REQUESTS, "stager")["pending"]:
        assert time.monotonic() < deadline, "stager requests still pending"
        time.sleep(0.02)


def test_stage_in_with_adler32_and_md5(rds, pilot_config):
    files = {f"in{i}.dat": f"content {i} ".encode() * (1000 * i + 1) for i in range(6)}
    for lfn, data in files.items():
        put_on_se(pilot_config, "demo.data", lfn, data)
    entries = [in_file(lfn, data) for lfn, data in files.items()]
    entries[1]["checksum"] = f"md5:{hashlib.md5(files['in1.dat']).hexdigest()}"
    entries[2]["checksum"] = None
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 11, "11:1:stagein", files=entries)
        event = answer(rds, 11, "stagein")
        with uds_client(pilot_config.socket_path("stager")) as client:
            status = client.get("/status").json()
    assert event["ok"] is True and event["error_code"] == 0 and event["request_id"] == "11:1:stagein"
    assert [f["lfn"] for f in event["files"]] == list(files)
    wd = workdir(pilot_config, 11)
    for f in event["files"]:
        data = files[f["lfn"]]
        assert f["status"] == "done" and f["fsize"] == len(data) and f["checksum"] == f"ad:{adler32(data)}"
        assert f["guid"] == f"g-{f['lfn']}" and f["endpoint"] == "LOCAL_SE"
        assert (wd / f["lfn"]).read_bytes() == data
    assert sorted(p.name for p in wd.iterdir()) == sorted(files)
    assert status["transfers"] == [] and status["done"] == 6 and status["failed"] == 0


def test_corrupt_replica_fails_with_1171_and_leaves_nothing(rds, pilot_config):
    put_on_se(pilot_config, "demo.data", "bad.dat", b"corrupted bytes!")
    entry = in_file("bad.dat", b"original bytes!!")  # same size, other adler32
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 12, "12:1:stagein", files=[entry])
        event = answer(rds, 12, "stagein")
    assert event["ok"] is False and event["error_code"] == 1171
    assert event["files"][0]["status"] == "failed" and "adler32 mismatch" in event["diag"]
    assert list(workdir(pilot_config, 12).iterdir()) == []


def test_missing_replica_fails_with_1099(rds, pilot_config):
    put_on_se(pilot_config, "demo.data", "here.dat", b"here")
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 13, "13:1:stagein",
             files=[in_file("here.dat", b"here"), in_file("gone.dat", b"gone")])
        event = answer(rds, 13, "stagein")
    assert event["ok"] is False and event["error_code"] == 1099
    assert "missing on the SE" in event["diag"] and str(se_file(pilot_config, "demo.data", "gone.dat")) in event["diag"]
    assert [f["status"] for f in event["files"]] == ["done", "failed"]


def test_stage_out_lands_at_the_deterministic_path(rds, pilot_config):
    data = b"output data\n" * 50_000
    (workdir(pilot_config, 14) / "out.root").write_bytes(data)
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 14, "14:1:stageout", files=[out_file("out.root")])
        event = answer(rds, 14, "stageout")
    assert event["ok"] is True, event
    dst = se_file(pilot_config, "demo.output", "out.root")
    assert adler32(dst.read_bytes()) == adler32(data)
    assert [p.name for p in dst.parent.iterdir()] == ["out.root"]  # no temporary file left
    f = event["files"][0]
    assert f == {**f, "status": "done", "fsize": len(data), "checksum": f"ad:{adler32(data)}",
                 "guid": "g-out.root", "surl": dst.resolve().as_uri(), "endpoint": "LOCAL_SE", "error_code": 0}


def test_missing_output_fails_with_1165(rds, pilot_config):
    (workdir(pilot_config, 15) / "a.out").write_bytes(b"a")
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 15, "15:1:stageout", files=[out_file("a.out"), out_file("b.out")])
        event = answer(rds, 15, "stageout")
    assert event["ok"] is False and event["error_code"] == 1165 and "b.out" in event["diag"]
    assert [f["status"] for f in event["files"]] == ["done", "failed"]


def test_unwritable_primary_falls_back_to_the_alternative(rds, pilot_config, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file: nothing can be created under it")  # root ignores chmod
    bad = {"name": "BROKEN_SE", "url": (blocker / "se").as_uri()}
    for job_id in (16, 17):
        (workdir(pilot_config, job_id) / "o.dat").write_bytes(b"payload output")
    pilot_config.queuedata.allow_alt_stageout = True
    with running_service("stager", pilot_config):
        # the job's ddmEndPointOut is the primary listed (a listed job endpoint is tried first)
        send(rds, pilot_config, "stageout", 16, "16:1:stageout", endpoints=[bad, se_endpoint(pilot_config)],
             files=[out_file("o.dat", ddm="BROKEN_SE")])
        send(rds, pilot_config, "stageout", 17, "17:1:stageout", endpoints=[bad],
             files=[out_file("o.dat", ddm="BROKEN_SE")])
        rescued, failed = answer(rds, 16, "stageout"), answer(rds, 17, "stageout")
    f = rescued["files"][0]
    assert rescued["ok"] is True and f["endpoint"] == "LOCAL_SE"
    assert "primary endpoint BROKEN_SE" in f["diag"] and "stored on alternative endpoint LOCAL_SE" in f["diag"]
    assert se_file(pilot_config, "demo.output", "o.dat").read_bytes() == b"payload output"
    assert failed["ok"] is False and failed["error_code"] == 1137


def test_alternative_stage_out_only_when_the_job_or_the_queue_allows_it(rds, pilot_config, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    endpoints = [{"name": "BROKEN_SE", "url": (blocker / "se").as_uri()}, se_endpoint(pilot_config)]
    cases = {30: None, 31: "on", 32: "force"}  # the queue does not allow it (the default)
    for job_id in cases:
        (workdir(pilot_config, job_id) / "o.dat").write_bytes(b"out")
    with running_service("stager", pilot_config):
        for job_id, alt in cases.items():
            extra = {} if alt is None else {"alt_stageout": alt}
            send(rds, pilot_config, "stageout", job_id, f"{job_id}:1:stageout", endpoints=endpoints,
                 files=[out_file("o.dat", ddm="BROKEN_SE")], **extra)
        refused, on, force = (answer(rds, job_id, "stageout") for job_id in cases)
    assert refused["ok"] is False and refused["error_code"] == 1137
    assert "alternative stage-out not tried" in refused["diag"] and "allow_alt_stageout is off" in refused["diag"]
    assert "LOCAL_SE" in refused["diag"] and refused["files"][0]["attempts"] == 1
    for event in (on, force):
        assert event["ok"] is True and event["files"][0]["endpoint"] == "LOCAL_SE", event

    pilot_config.queuedata.allow_alt_stageout = True  # the queue allows it; a job that says off still wins
    (workdir(pilot_config, 33) / "o.dat").write_bytes(b"out")
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 33, "33:1:stageout", endpoints=endpoints,
             files=[out_file("o.dat", ddm="BROKEN_SE")], alt_stageout="off")
        off = answer(rds, 33, "stageout")
    assert off["ok"] is False and "the job's altStageOut is off" in off["diag"]


def test_stagelog_tars_the_work_dir_and_stages_it_out(rds, pilot_config):
    wd = workdir(pilot_config, 18)
    (wd / "payload.stdout").write_text("hello\n")
    (wd / "sub" / "dir").mkdir(parents=True)
    (wd / "sub" / "dir" / "notes.txt").write_text("notes")
    (wd / "input.dat").write_bytes(b"input")
    (wd / "output.dat").write_bytes(b"output")
    top = "tarball_PandaJob_18_LOCAL_TEST"
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagelog", 18, "18:1:stagelog", tarball_dir=top,
             log={"lfn": "job18.log.tgz", "scope": "demo.log", "guid": "g-log", "ddm_endpoint": "LOCAL_SE"},
             exclude=["input.dat", "output.dat"])
        event = answer(rds, 18, "stagelog")
    assert event["ok"] is True, event
    stored = se_file(pilot_config, "demo.log", "job18.log.tgz")
    f = event["files"][0]
    assert f["guid"] == "g-log" and f["checksum"] == f"ad:{adler32(stored.read_bytes())}"
    with tarfile.open(stored) as tar:
        names = tar.getnames()
    assert all(n == top or n.startswith(f"{top}/") for n in names)
    assert f"{top}/payload.stdout" in names and f"{top}/sub/dir/notes.txt" in names
    assert not any(n.endswith(("input.dat", "output.dat", "job18.log.tgz")) for n in names)


def test_redelivered_request_emits_nothing_new(rds, pilot_config):
    put_on_se(pilot_config, "demo.data", "x.dat", b"x")
    first = send(rds, pilot_config, "stagein", 19, "19:1:stagein", files=[in_file("x.dat", b"x")])
    with running_service("stager", pilot_config):
        assert answer(rds, 19, "stagein")["ok"] is True
        rds.xadd(bus.STAGER_REQUESTS, bus.encode(first))  # the same request again
        send(rds, pilot_config, "stageout", 19, "19:1:stageout", files=[])
        answer(rds, 19, "stageout")
        wait_all_acked(rds)
    stored = rds.hget(bus.service_state_key("stager", 19), "19:1:stagein")
    assert stored is not None and '"ok": true' in stored

    # a crash after the event: the entry is still pending at the restarted stager
    rds.xadd(bus.STAGER_REQUESTS, bus.encode(first))
    rds.xreadgroup("stager", "stager", {bus.STAGER_REQUESTS: ">"}, count=1)  # delivered, never acked
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 19, "19:2:stageout", files=[])
        wait_all_acked(rds)
    types = [bus.decode(fields)["type"] for _id, fields in rds.xrange(bus.job_events(19))]
    assert types == ["stagein_done", "stageout_done", "stageout_done"]


def test_malformed_requests_are_answered_or_dropped_and_the_service_lives(rds, pilot_config):
    with running_service("stager", pilot_config) as proc:
        rds.xadd(bus.STAGER_REQUESTS, {"data": "not json"})
        rds.xadd(bus.STAGER_REQUESTS, bus.encode({"kind": "stagein", "request_id": "no-job"}))
        rds.xadd(bus.STAGER_REQUESTS, bus.encode({"kind": "stagein", "job_id": 20, "request_id": "20:1:stagein",
                                                  "files": [{"lfn": "a.dat"}]}))
        bad = answer(rds, 20, "stagein")
        send(rds, pilot_config, "stageout", 21, "21:1:stageout", files=[])
        good = answer(rds, 21, "stageout")
        assert proc.poll() is None
    assert bad["ok"] is False and bad["error_code"] == 1301 and "workdir" in bad["diag"]
    assert bad["files"][0]["lfn"] == "a.dat" and bad["files"][0]["status"] == "failed"
    assert good["ok"] is True and good["files"] == []
