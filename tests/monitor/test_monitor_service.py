"""The monitor alone: a real process and Redis; the test plays the stager and the runner."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from nodepilot import bus
from nodepilot.config import PilotConfig
from services.monitor.service import MonitorService
from tests.conftest import wait_healthy
from tests.waiting import wait_until

JOB = {
    "PandaID": 77, "attemptNr": 1, "transformation": "run.sh", "jobPars": "--fast",
    "inFiles": "in.dat", "fsize": "3", "checksum": "ad:024d0127", "scopeIn": "s.in", "GUID": "g-in",
    "outFiles": "out.dat,log.tgz", "logFile": "log.tgz", "scopeOut": "s.out", "scopeLog": "s.log",
}


class Neighbours:
    """Plays the stager and the runner at the Redis boundary."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.requests: list[dict] = []

    def next_request(self, stream: str, timeout: float = 20) -> dict:
        group = stream.split(":")[0]
        bus_ensure(self.r, stream, group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.r.xreadgroup(group, "test", {stream: ">"}, count=1, block=500)
            for _s, entries in reply or []:
                for entry_id, fields in entries:
                    self.r.xack(stream, group, entry_id)
                    message = json.loads(fields["data"])
                    self.requests.append(message)
                    return message
        raise TimeoutError(f"no request on {stream}")

    def answer(self, request: dict, type_: str, **fields) -> None:
        self.r.xadd(bus.job_events(request["job_id"]), bus.encode(
            {"type": type_, "service": "test", "request_id": request["request_id"], **fields}))


def bus_ensure(r: redis.Redis, stream: str, group: str) -> None:
    with contextlib.suppress(redis.ResponseError):
        r.xgroup_create(stream, group, id="0", mkstream=True)


def done_file(lfn: str, guid: str = "g") -> dict:
    return {"lfn": lfn, "status": "done", "error_code": 0, "diag": "", "fsize": 3, "checksum": "ad:024d0127",
            "guid": guid, "surl": f"file:///se/{lfn}", "endpoint": "LOCAL_SE", "seconds": 0.01}


@pytest.fixture
def heartbeat_s() -> float:
    return 1800.0


@pytest.fixture
def monitor(pilot_config: PilotConfig, tmp_path: Path, heartbeat_s: float):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(JOB))
    pilot_config.job_file = str(job_file)
    pilot_config.updates_file = str(tmp_path / "updates.jsonl")
    pilot_config.max_jobs = 1
    pilot_config.heartbeat_s = heartbeat_s
    pilot_config.save()
    proc = subprocess.Popen([sys.executable, "-m", "nodepilot", "service", "monitor",
                             "-c", str(pilot_config.config_path)])
    yield proc, pilot_config
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def updates(config: PilotConfig) -> list[dict]:
    return [json.loads(x)["fields"] for x in Path(config.updates_file).read_text().splitlines()]


def test_lifecycle_in_order(monitor, rds):
    proc, config = monitor
    n = Neighbours(rds)
    stagein = n.next_request(bus.STAGER_REQUESTS)
    assert stagein["kind"] == "stagein" and stagein["files"][0]["checksum"] == "ad:024d0127"
    assert stagein["endpoints"][0]["url"].startswith("file://")
    n.answer(stagein, "stagein_done", ok=True, error_code=0, diag="", files=[done_file("in.dat")], seconds=0.1)
    run = n.next_request(bus.RUNNER_REQUESTS)
    assert (run["action"], run["command"], run["args"]) == ("run", "run.sh", "--fast")
    assert run["workdir"].endswith("PanDA_Pilot-77")
    n.answer(run, "payload_started", pid=1, start_time=time.time())
    n.answer(run, "payload_finished", exit_code=0, signal=None, pilot_error_code=0, exe_error_code=0,
             cpu_seconds=1.4, max_rss_kb=1000, n_events=12, report_text='{"exitCode": 0}',
             output_guids={"out.dat": "guid-out"})
    stageout = n.next_request(bus.STAGER_REQUESTS)
    assert stageout["kind"] == "stageout" and stageout["files"][0]["guid"] == "guid-out"
    n.answer(stageout, "stageout_done", ok=True, error_code=0, diag="", files=[done_file("out.dat", "guid-out")])
    stagelog = n.next_request(bus.STAGER_REQUESTS)
    assert stagelog["kind"] == "stagelog" and stagelog["tarball_dir"] == "tarball_PandaJob_77_LOCAL_TEST"
    assert set(stagelog["exclude"]) == {"in.dat", "out.dat"}
    n.answer(stagelog, "stagelog_done", ok=True, error_code=0, diag="", files=[done_file("log.tgz")])
    assert proc.wait(20) == 0
    ups = updates(config)
    assert [u["state"] for u in ups] == ["starting", "running", "transferring", "finished"]
    final = ups[-1]
    assert final["pilotErrorCode"] == 0 and final["nEvents"] == 12 and final["cpuConsumptionTime"] == 1
    assert set(json.loads(final["xml"])) == {"out.dat", "log.tgz"}
    assert json.loads(final["xml"])["out.dat"]["guid"] == "guid-out"
    assert final["metaData"] == '{"exitCode": 0}'
    assert rds.hget("job:77", "state") == "finished"


def test_sigterm_kills_payload_stages_log_and_reports_1201(monitor, rds):
    proc, config = monitor
    n = Neighbours(rds)
    wait_healthy(config.socket_path("monitor"), proc, 20)
    stagein = n.next_request(bus.STAGER_REQUESTS)
    n.answer(stagein, "stagein_done", ok=True, error_code=0, diag="", files=[done_file("in.dat")])
    run = n.next_request(bus.RUNNER_REQUESTS)
    n.answer(run, "payload_started", pid=1, start_time=time.time())
    proc.send_signal(signal.SIGTERM)
    kill = n.next_request(bus.RUNNER_REQUESTS)
    assert kill["action"] == "kill" and kill["job_id"] == 77
    proc.send_signal(signal.SIGTERM)  # a second signal changes nothing
    n.answer(run, "payload_finished", exit_code=None, signal=15, pilot_error_code=1305, exe_error_code=0)
    stagelog = n.next_request(bus.STAGER_REQUESTS)
    assert stagelog["kind"] == "stagelog"  # outputs are not staged out after a kill; the log is
    n.answer(stagelog, "stagelog_done", ok=True, error_code=0, diag="", files=[done_file("log.tgz")])
    assert proc.wait(20) == 128 + signal.SIGTERM
    final = updates(config)[-1]
    assert final["state"] == "failed" and final["pilotErrorCode"] == 1201
    assert "signal 15" in final["pilotErrorDiag"]


def test_stagein_failure_skips_payload_but_stages_log(monitor, rds):
    proc, config = monitor
    n = Neighbours(rds)
    stagein = n.next_request(bus.STAGER_REQUESTS)
    n.answer(stagein, "stagein_done", ok=False, error_code=1171, diag="adler32 mismatch for in.dat",
             files=[{**done_file("in.dat"), "status": "failed", "error_code": 1171}])
    stagelog = n.next_request(bus.STAGER_REQUESTS)
    assert stagelog["kind"] == "stagelog"
    n.answer(stagelog, "stagelog_done", ok=True, error_code=0, diag="", files=[done_file("log.tgz")])
    assert proc.wait(20) == 0
    final = updates(config)[-1]
    assert final["state"] == "failed" and final["pilotErrorCode"] == 1171
    assert not [r for r in n.requests if r.get("action") == "run"]


@pytest.mark.parametrize("heartbeat_s", [0.2])
def test_heartbeats_while_the_payload_runs(monitor, rds):
    proc, config = monitor
    n = Neighbours(rds)
    stagein = n.next_request(bus.STAGER_REQUESTS)
    n.answer(stagein, "stagein_done", ok=True, error_code=0, diag="", files=[done_file("in.dat")])
    run = n.next_request(bus.RUNNER_REQUESTS)
    n.answer(run, "payload_started", pid=1, start_time=time.time())
    # the payload "runs" until three heartbeats (every 0.2 s) went out
    wait_until(lambda: [u["state"] for u in updates(config)].count("running") >= 3, 10, "three heartbeats")
    n.answer(run, "payload_finished", exit_code=0, signal=None, pilot_error_code=0, exe_error_code=0)
    for kind in ("stageout", "stagelog"):
        request = n.next_request(bus.STAGER_REQUESTS)
        assert request["kind"] == kind
        n.answer(request, f"{kind}_done", ok=True, error_code=0, diag="", files=[done_file("x")])
    assert proc.wait(20) == 0
    states = [u["state"] for u in updates(config)]
    assert states[0] == "starting" and states[-1] == "finished"
    assert states.count("running") >= 3, states
    first_out = states.index("transferring")
    assert all(s == "running" for s in states[1:first_out]), states
    assert all(s == "transferring" for s in states[first_out:-1]), states


def test_status_api_shows_the_current_job(monitor, rds):
    from nodepilot.http import uds_client

    proc, config = monitor
    n = Neighbours(rds)
    n.next_request(bus.STAGER_REQUESTS)  # stage-in requested: the job is current
    wait_healthy(config.socket_path("monitor"), proc, 20)
    with uds_client(config.socket_path("monitor")) as client:
        status = client.get("/status").json()
    assert status["service"] == "monitor" and status["current_job"] == 77
    assert status["current_state"] == "starting"


def test_the_monitor_never_retires(pilot_config: PilotConfig):
    pilot_config.server = "http://127.0.0.1:1"
    monitor = MonitorService(pilot_config)
    monitor.retire()  # a stray SIGUSR2
    assert not monitor.stopping.is_set()
