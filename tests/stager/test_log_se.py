"""The log tarball on the normal SE and, when the queue has one, also on the log SE (job-id pair path)."""

from __future__ import annotations

from pathlib import Path

from nodepilot.queue.model import Endpoint
from services.stager.paths import deterministic_path
from tests.conftest import running_service
from tests.stager.test_stager_service import adler32, answer, se_file, send, workdir

JOB = 1838566890
LOG = {"lfn": "job.log.tgz", "scope": "demo.log", "guid": "g-log", "ddm_endpoint": "LOCAL_SE"}


def stage_log(rds, cfg) -> dict:
    (workdir(cfg, JOB) / "payload.stdout").write_text("hello\n")
    with running_service("stager", cfg):
        send(rds, cfg, "stagelog", JOB, f"{JOB}:1:stagelog", log=LOG, tarball_dir=f"tarball_PandaJob_{JOB}_Q")
        return answer(rds, JOB, "stagelog")


def test_the_log_goes_to_both_ses(rds, pilot_config, tmp_path):
    log_se = tmp_path / "logse"
    pilot_config.queuedata.endpoints["log_se"] = [Endpoint("LOG_SE", log_se.as_uri())]
    event = stage_log(rds, pilot_config)
    assert event["ok"] is True, event
    f = event["files"][0]
    normal, second = se_file(pilot_config, "demo.log", "job.log.tgz"), log_se / "18/38/56/68/90/job.log.tgz"
    assert normal.read_bytes() == second.read_bytes()
    assert f["checksum"] == f"ad:{adler32(second.read_bytes())}" and f["endpoint"] == "LOCAL_SE"
    assert f["surl"] == normal.resolve().as_uri() and f["log_se_surl"] == second.as_uri()
    assert f["diag"] == "also stored on log SE LOG_SE"


def test_a_failing_log_se_is_noted_not_fatal(rds, pilot_config, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file: the log SE cannot write under it")
    pilot_config.queuedata.endpoints["log_se"] = [Endpoint("LOG_SE", (blocker / "logse").as_uri())]
    event = stage_log(rds, pilot_config)
    f = event["files"][0]
    assert event["ok"] is True and event["error_code"] == 0 and f["status"] == "done"
    assert se_file(pilot_config, "demo.log", "job.log.tgz").is_file()
    assert f["log_se_surl"] == "" and f["diag"].startswith("log SE copy failed (not fatal): ")
    assert "Not a directory" in f["diag"]


def test_without_a_log_se_only_the_normal_copy(rds, pilot_config):
    event = stage_log(rds, pilot_config)
    assert event["ok"] is True and event["files"][0]["diag"] == "" and event["files"][0]["log_se_surl"] == ""
    assert not any(Path(pilot_config.se_dir).rglob("90"))


def test_log_se_over_webdav(rds, pilot_config, webdav_server):
    job = JOB
    (workdir(pilot_config, job) / "payload.stdout").write_text("log me\n")
    pilot_config.queuedata.endpoints["log_se"] = [Endpoint("LOGS", webdav_server.url)]
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagelog", job, f"{job}:1:stagelog", tarball_dir="tarball",
             log={"lfn": "job.log.tgz", "scope": "demo.log", "guid": "g", "ddm_endpoint": "LOCAL_SE"})
        event = answer(rds, job, "stagelog")
    f = event["files"][0]
    assert event["ok"] is True and f["log_se_surl"] == webdav_server.file_url("18/38/56/68/90/job.log.tgz")
    stored = webdav_server.read("18/38/56/68/90/job.log.tgz")
    assert stored == (Path(pilot_config.se_dir) / deterministic_path("demo.log", "job.log.tgz")).read_bytes()
