"""Direct access through a real stager: inputs the payload reads in place are checked, not copied."""

from __future__ import annotations

from services.stager.paths import deterministic_path
from tests.conftest import running_service
from tests.stager.test_stager_service import answer, in_file, put_on_se, se_file, send, workdir

DATA = b"event data " * 100


def request_files() -> list[dict]:
    return [in_file("direct.dat", DATA), {**in_file("local.dat", DATA), "dispatch_token": "local"},
            in_file("gone.dat", DATA), {**in_file("short.dat", DATA), "fsize": len(DATA) + 1}]


def stage(rds, cfg, job_id: int, **extra) -> dict:
    for lfn in ("direct.dat", "local.dat", "short.dat"):
        put_on_se(cfg, "demo.data", lfn, DATA)
    with running_service("stager", cfg):
        send(rds, cfg, "stagein", job_id, f"{job_id}:1:stagein", files=request_files(), **extra)
        return answer(rds, job_id, "stagein")


def test_job_and_queue_allow_it(rds, pilot_config):
    pilot_config.queuedata.direct_access_lan = True
    event = stage(rds, pilot_config, 81, direct_access=True)
    files = {f["lfn"]: f for f in event["files"]}
    direct = files["direct.dat"]
    turl = se_file(pilot_config, "demo.data", "direct.dat").resolve().as_uri()
    assert direct["status"] == "direct" and direct["turl"] == turl and direct["surl"] == turl
    assert direct["fsize"] == len(DATA) and direct["error_code"] == 0
    assert files["local.dat"]["status"] == "done" and files["local.dat"]["turl"] == ""  # marked for copying
    assert files["gone.dat"]["status"] == "failed" and files["gone.dat"]["error_code"] == 1099
    assert "missing on the SE" in files["gone.dat"]["diag"]
    assert files["short.dat"]["status"] == "failed" and "size mismatch" in files["short.dat"]["diag"]
    assert sorted(p.name for p in workdir(pilot_config, 81).iterdir()) == ["local.dat"]
    assert event["ok"] is False and event["error_code"] == 1099


def test_copied_when_the_queue_or_the_job_does_not_allow_it(rds, pilot_config):
    event = stage(rds, pilot_config, 82, direct_access=True)  # the queue does not allow it (default)
    assert [f["status"] for f in event["files"]] == ["done", "done", "failed", "failed"]
    pilot_config.queuedata.direct_access_lan = True
    event = stage(rds, pilot_config, 83)  # the job does not ask for it
    assert [f["status"] for f in event["files"]] == ["done", "done", "failed", "failed"]
    event = stage(rds, pilot_config, 84, direct_access=True, activity="read_wan")  # LAN only
    assert [f["status"] for f in event["files"]] == ["done", "done", "failed", "failed"]
    assert (workdir(pilot_config, 84) / "direct.dat").read_bytes() == DATA


def test_xrootd_replicas_are_checked_with_the_servers_checksum(rds, pilot_config, xrootd_server):
    pilot_config.queuedata.direct_access_lan = True
    for lfn in ("good.root", "bad.root"):
        xrootd_server.put(deterministic_path("demo.data", lfn), DATA)
    xrootd_server.corrupt(deterministic_path("demo.data", "bad.root"))
    endpoints = [{"name": "XROOTD_SE", "url": xrootd_server.url}]
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 85, "85:1:stagein", endpoints=endpoints, direct_access=True,
             files=[in_file("good.root", DATA), in_file("bad.root", DATA)])
        event = answer(rds, 85, "stagein")
    good, bad = event["files"]
    assert good["status"] == "direct" and good["checksum"] == in_file("good.root", DATA)["checksum"]
    assert good["turl"] == xrootd_server.file_url(deterministic_path("demo.data", "good.root"))
    assert bad["status"] == "failed" and bad["error_code"] == 1171 and "adler32 mismatch" in bad["diag"]
    assert list(workdir(pilot_config, 85).iterdir()) == []
