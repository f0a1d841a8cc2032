"""The runner as a real process on a real Redis; the test plays the monitor."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import psutil
import redis

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode
from nodepilot.http import uds_client
from services.runner.execute import payload_env
from tests.conftest import read_events, running_service
from tests.waiting import wait_until

FINISHED_FIELDS = {
    "type", "service", "request_id", "exit_code", "signal", "start_time", "end_time", "wall_seconds",
    "cpu_seconds", "max_rss_kb", "pilot_error_code", "pilot_error_diag", "exe_error_code", "exe_error_diag",
    "n_events", "report_text", "output_guids",
    "max_pss_kb", "max_vmem_kb", "max_swap_kb", "avg_rss_kb", "avg_pss_kb", "avg_vmem_kb", "avg_swap_kb",
    "tot_rbytes", "tot_wbytes", "rate_rbytes", "rate_wbytes", "max_gpu_mem_kb", "avg_gpu_util_pct", "isolation",
}


def workdir(cfg: PilotConfig, job_id: int) -> Path:
    path = Path(cfg.work_dir) / f"PanDA_Pilot-{job_id}"
    path.mkdir(exist_ok=True)
    return path


def run(rds: redis.Redis, cfg: PilotConfig, job_id: int, command: str, args: str = "", *,
        setup: str = "", env: dict | None = None, **override) -> dict:
    message = {"action": "run", "job_id": job_id, "request_id": f"{job_id}:0:run",
               "workdir": str(workdir(cfg, job_id)), "command": command, "args": args,
               "env": env or {}, "setup": setup, **override}
    rds.xadd(bus.RUNNER_REQUESTS, bus.encode(message))
    return message


def kill(rds: redis.Redis, job_id: int, grace: float, reason: str = "test kill") -> None:
    rds.xadd(bus.RUNNER_REQUESTS, bus.encode({"action": "kill", "job_id": job_id, "request_id": f"{job_id}:kill",
                                              "reason": reason, "grace_seconds": grace}))


def finished(rds: redis.Redis, job_id: int, timeout: float = 30) -> dict:
    event = read_events(rds, job_id, {"payload_finished"}, timeout=timeout)[-1]
    assert event["service"] == "runner"
    assert set(event) == FINISHED_FIELDS
    return event


def all_events(rds: redis.Redis, job_id: int) -> list[dict]:
    return [json.loads(f["data"]) for _id, f in rds.xrange(bus.job_events(job_id))]



def wait_all_acked(rds: redis.Redis, timeout: float = 10.0) -> None:
    def acked() -> bool:
        group = next(g for g in rds.xinfo_groups(bus.RUNNER_REQUESTS) if g["name"] == "runner")
        last = rds.xrevrange(bus.RUNNER_REQUESTS, count=1)[0][0]
        return group["pending"] == 0 and group["last-delivered-id"] == last

    wait_until(acked, timeout, "all runner requests acknowledged")


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_hello(rds, pilot_config):
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 101, "echo", "hello; exit 0")
        events = read_events(rds, 101, {"payload_finished"}, timeout=30)
        started, end = events[0], events[-1]
    assert started["type"] == "payload_started" and started["request_id"] == "101:0:run"
    assert started["pid"] > 0 and started["start_time"] <= end["end_time"]
    assert set(end) == FINISHED_FIELDS
    assert (end["exit_code"], end["signal"], end["pilot_error_code"], end["exe_error_code"]) == (0, None, 0, 0)
    assert end["start_time"] == started["start_time"] and end["wall_seconds"] >= 0
    assert end["cpu_seconds"] >= 0 and end["max_rss_kb"] > 0
    assert end["report_text"] == "" and end["output_guids"] == {}
    assert (workdir(pilot_config, 101) / "payload.stdout").read_text() == "hello\n"


def test_exit_code(rds, pilot_config):
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 102, "echo", "about to fail >&2; exit 3")
        event = finished(rds, 102)
    assert event["exit_code"] == 3 and event["signal"] is None
    assert event["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED
    assert event["exe_error_code"] == 3 and event["exe_error_diag"] == "about to fail"


def test_job_report_and_error_report(rds, pilot_config):
    report = {"exitCode": 65, "exitMsg": "Transform failed: no input events",
              "resource": {"transform": {"processedEvents": 17}},
              "files": {"output": [{"subFiles": [{"name": "out.root", "file_guid": "GUID-1"}]}]}}
    script = f"cat > jobReport.json <<'EOF'\n{json.dumps(report)}\nEOF\nexit 65"
    good = {"exitCode": 0, "exitMsg": "OK", "resource": {"transform": {"processedEvents": 1000}}}
    (workdir(pilot_config, 104) / "jobReport.json").write_text(json.dumps(good))
    error_report = {"error_code": 1360, "error_diag": "container image not found"}
    (workdir(pilot_config, 105) / "payload_error_report.json").write_text(json.dumps(error_report))
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 103, "true", setup=script)
        run(rds, pilot_config, 104, "true")
        run(rds, pilot_config, 105, "false")
        failed, fine, reported = finished(rds, 103), finished(rds, 104), finished(rds, 105)
    assert failed["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED
    assert failed["exe_error_code"] == 65
    assert failed["exe_error_diag"] == "Transform failed: no input events"
    assert failed["n_events"] == 17 and failed["output_guids"] == {"out.root": "GUID-1"}
    assert json.loads(failed["report_text"]) == report
    assert (fine["pilot_error_code"], fine["n_events"]) == (0, 1000)
    assert reported["pilot_error_code"] == ErrorCode.CONTAINER_IMAGE_NOT_FOUND
    assert reported["exe_error_diag"] == "container image not found"


def test_command_not_found_and_sigsegv(rds, pilot_config):
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 106, "no_such_transform_x7", "--in a.root")
        run(rds, pilot_config, 107, "kill", "-SEGV $$")
        missing, segv = finished(rds, 106), finished(rds, 107)
    assert missing["pilot_error_code"] == ErrorCode.TRANSFORMATION_NOT_FOUND
    assert missing["exit_code"] == 127 and "no_such_transform_x7" in missing["pilot_error_diag"]
    assert segv["pilot_error_code"] == ErrorCode.PAYLOAD_SIGSEGV
    assert segv["signal"] == signal.SIGSEGV and segv["exit_code"] is None


def test_kill_reaches_the_whole_tree(rds, pilot_config):
    marker = f"311.{random.randrange(10**6):06d}"
    setup = f"trap '' TERM\nsetsid sleep {marker} &"  # ignores SIGTERM; its grandchild leaves the group
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 108, "sleep", "60", setup=setup)
        started = read_events(rds, 108, {"payload_started"}, timeout=30)[-1]
        # the grandchild itself (a sleep), not a wrapper whose command line only mentions the marker:
        # then the payload's trap is set
        wait_until(lambda: [p for p in processes_with(marker) if p.info["cmdline"][:1] == ["sleep"]], 10,
                   "the grandchild running")
        with uds_client(pilot_config.socket_path("runner")) as client:
            payloads = client.get("/status").json()["payloads"]
        assert [(p["job_id"], p["pid"]) for p in payloads] == [(108, started["pid"])]
        assert payloads[0]["running_s"] >= 0
        t0 = time.monotonic()
        kill(rds, 108, grace=1.0, reason="looping job")
        event = finished(rds, 108, timeout=15)
        elapsed = time.monotonic() - t0
        kills = [e for e in all_events(rds, 108) if e["type"] == "payload_kill_sent"]
    assert 0.9 <= elapsed < 1.0 + 4.0, elapsed
    assert event["signal"] == signal.SIGKILL and event["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED
    assert "SIGKILL" in event["pilot_error_diag"] and "looping job" in event["pilot_error_diag"]
    assert kills == [{"type": "payload_kill_sent", "service": "runner", "request_id": "108:kill",
                      "killed": True, "pids": [started["pid"]]}]
    wait_until(lambda: not processes_with(marker), 5, "no process of the payload left")


def test_kill_through_the_api(rds, pilot_config):
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 109, "sleep", "60")
        read_events(rds, 109, {"payload_started"}, timeout=30)
        with uds_client(pilot_config.socket_path("runner")) as client:
            assert client.post("/kill/999").status_code == 404
            reply = client.post("/kill/109", params={"grace_seconds": 5})
            assert reply.status_code == 200 and len(reply.json()["pids"]) == 1
        event = finished(rds, 109, timeout=10)
        with uds_client(pilot_config.socket_path("runner")) as client:
            assert client.get("/status").json()["payloads"] == []
    assert event["signal"] == signal.SIGTERM and event["wall_seconds"] < 5


def test_environment(rds, pilot_config, monkeypatch):
    monkeypatch.setenv("NODEPILOT_SECRET_TEST", "s3cret")
    monkeypatch.setenv("BEARER_TOKEN", "t0ken")
    monkeypatch.setenv("NP_TEST_KEPT", "kept")
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 110, "env", "> env.txt", env={"PANDAID": "110", "MY_VAR": "a b;c"})
        event = finished(rds, 110)
    assert event["pilot_error_code"] == 0
    env = dict(line.split("=", 1) for line in (workdir(pilot_config, 110) / "env.txt").read_text().splitlines()
               if "=" in line)
    assert env["PANDAID"] == "110" and env["MY_VAR"] == "a b;c" and env["NP_TEST_KEPT"] == "kept"
    assert not [name for name in env if name.startswith("NODEPILOT_")]
    assert "BEARER_TOKEN" not in env and "REDIS_URL" not in env


def test_payload_env_drops_the_pilots_secrets():
    base = {"PATH": "/bin", "NODEPILOT_REDIS_URL": "redis://:pw@h", "REDIS_URL": "x", "X509_USER_PROXY": "/p",
            "BEARER_TOKEN": "t", "BEARER_TOKEN_FILE": "/t", "PANDA_AUTH_ID_TOKEN": "t", "HOME": "/h"}
    assert payload_env(base, {"A": "1", "HOME": "/w"}) == {"PATH": "/bin", "HOME": "/w", "A": "1"}


def test_redelivered_finished_request_is_only_acknowledged(rds, pilot_config):
    with running_service("runner", pilot_config):
        message = run(rds, pilot_config, 111, "echo", "once >> count.txt")
        finished(rds, 111)
        wait_all_acked(rds)
        before = all_events(rds, 111)
        rds.xadd(bus.RUNNER_REQUESTS, bus.encode(message))
        wait_all_acked(rds)
        assert all_events(rds, 111) == before
    assert (workdir(pilot_config, 111) / "count.txt").read_text() == "once\n"


def test_malformed_requests(rds, pilot_config):
    with running_service("runner", pilot_config) as proc:
        run(rds, pilot_config, 112, "true", workdir="/nonexistent/dir")
        run(rds, pilot_config, 113, "", request_id="113:0:run")
        rds.xadd(bus.RUNNER_REQUESTS, bus.encode({"action": "run", "request_id": "x"}))
        rds.xadd(bus.RUNNER_REQUESTS, {"data": "not json"})
        no_dir, no_command = finished(rds, 112), finished(rds, 113)
        wait_all_acked(rds)
        run(rds, pilot_config, 114, "true")
        assert finished(rds, 114)["pilot_error_code"] == 0
        assert proc.poll() is None
    assert no_dir["pilot_error_code"] == ErrorCode.SETUP_FAILED
    assert "/nonexistent/dir does not exist" in no_dir["pilot_error_diag"]
    assert no_command["pilot_error_code"] == ErrorCode.SETUP_FAILED and "command" in no_command["pilot_error_diag"]
    assert not [e for e in all_events(rds, 112) if e["type"] == "payload_started"]


def test_restarted_runner_adopts_the_running_payload_and_never_reruns(rds, pilot_config):
    with running_service("runner", pilot_config) as proc:
        run(rds, pilot_config, 115, "echo", "started >> count.txt; while [ ! -e go ]; do sleep 0.05; done; exit 3")
        pid = read_events(rds, 115, {"payload_started"}, timeout=30)[-1]["pid"]
        proc.kill()  # no chance to clean up: the payload is left running, its request pending
        proc.wait(10)
    assert psutil.pid_exists(pid)
    with running_service("runner", pilot_config):
        with uds_client(pilot_config.socket_path("runner")) as client:  # adopted: the new runner watches it
            wait_until(lambda: [p["pid"] for p in client.get("/status").json()["payloads"]] == [pid], 10, "adopted")
        (workdir(pilot_config, 115) / "go").touch()
        event = finished(rds, 115, timeout=30)
        wait_all_acked(rds)
    assert event["exit_code"] == 3 and event["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED, event
    assert [e["type"] for e in all_events(rds, 115)].count("payload_started") == 1
    assert (workdir(pilot_config, 115) / "count.txt").read_text() == "started\n"


def test_stopping_runner_ends_its_payloads(rds, pilot_config):
    job_id = 116
    with running_service("runner", pilot_config) as proc:
        run(rds, pilot_config, job_id, "sleep", "60")
        pid = read_events(rds, job_id, {"payload_started"}, timeout=30)[-1]["pid"]
        proc.terminate()
        assert proc.wait(15) == 0
    event = finished(rds, job_id, timeout=5)
    assert event["pilot_error_code"] == ErrorCode.PILOT_EXCEPTION and "runner stopped" in event["pilot_error_diag"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
