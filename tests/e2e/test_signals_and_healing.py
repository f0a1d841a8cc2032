"""The pilot under stress: a signal mid-payload, a service killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.e2e.conftest import NODEPILOT, add_jobs, final_update, kill_if_running, write_queuedata


def start_pilot(site, server_url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", server_url, "--workdir", str(site / "work"),
         "--se-dir", str(site / "se"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_file(path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def service_pids(pilot: subprocess.Popen) -> dict[str, int]:
    """The launcher's service children, by the socket each one holds open."""
    pids = {}
    for child in psutil.Process(pilot.pid).children():
        try:
            for conn in child.net_connections(kind="unix"):
                if conn.laddr.endswith(".sock") and "redis" not in conn.laddr:
                    pids[conn.laddr.rsplit("/", 1)[-1].removesuffix(".sock")] = child.pid
        except psutil.Error:
            pass
    return pids


def test_sigterm_mid_payload_fails_job_with_1201_and_leaves_nothing(site, job_server):
    mark = f"{300 + os.getpid() % 1000}.{time.monotonic_ns() % 10**6}"  # this run's payload only
    add_jobs(site, {
        "PandaID": 5001, "attemptNr": 1, "transformation": "bash",
        "jobPars": f"-c 'trap \"\" TERM; sleep {mark} & setsid sleep {mark} & touch started; wait'",
        "outFiles": "out.txt,l5001.tgz", "logFile": "l5001.tgz", "scopeOut": "demo.output", "scopeLog": "demo.log",
    })
    pilot = start_pilot(site, job_server.url)
    try:
        wait_for_file(site / "work" / "PanDA_Pilot-5001" / "started")
        pilot.send_signal(signal.SIGTERM)
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 128 + signal.SIGTERM, output[-3000:]
    update = final_update(job_server.jobs()[5001])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1201
    assert "l5001.tgz" in json.loads(update.get("job_output_report") or "{}"), output[-4000:]  # log staged out
    leftovers = [p for p in psutil.process_iter(["cmdline", "status"])
                 if p.info["cmdline"] == ["sleep", mark] and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not leftovers, output[-6000:]


def test_a_stager_killed_with_a_request_in_hand_is_restarted_and_the_job_completes(site, job_server):
    """The stager runs while it works for a job (nodepilot/demand.py): it is killed while it stages the outputs
    out, held there by the queue's copysetup until the test lets it go; its successor serves the request."""
    add_jobs(site, {
        "PandaID": 5002, "attemptNr": 1, "transformation": "bash", "jobPars": "-c 'echo data > out.txt'",
        "outFiles": "out.txt,l5002.tgz", "logFile": "l5002.tgz", "scopeOut": "demo.output", "scopeLog": "demo.log",
    })
    gate, go = site / "in_setup", site / "go"
    queue = write_queuedata(site, copysetup=f"touch {gate}; while [ ! -e {go} ]; do sleep 0.05; done")
    pilot = start_pilot(site, job_server.url, "--queuedata", queue)
    try:
        wait_for_file(gate)
        # one Process object, taken before the kill: the launcher may reap the stager before we look again
        stager = psutil.Process(service_pids(pilot)["stager"])
        stager.kill()
        stager.wait(10)
        go.touch()
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, output[-3000:]
    assert "stager died" in output and "restarting" in output
    update = final_update(job_server.jobs()[5002])
    assert update["job_status"] == "finished", update
    assert set(json.loads(update["job_output_report"])) == {"out.txt", "l5002.tgz"}


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 1208), (signal.SIGQUIT, 1202), (signal.SIGUSR1, 1207)])
def test_each_signal_has_its_code(site, job_server, signum, code):
    add_jobs(site, {
        "PandaID": 5100 + signum, "attemptNr": 1, "transformation": "bash",
        "jobPars": "-c 'touch started; sleep 120'", "outFiles": "l.tgz", "logFile": "l.tgz", "scopeLog": "demo.log",
    })
    pilot = start_pilot(site, job_server.url)
    try:
        wait_for_file(site / "work" / f"PanDA_Pilot-{5100 + signum}" / "started")
        pilot.send_signal(signum)
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 128 + signum, output[-3000:]
    updates = job_server.jobs()[5100 + signum]["updates"]
    assert updates[-1]["job_status"] == "failed", output[-5000:]
    update = final_update(job_server.jobs()[5100 + signum])
    assert update["pilot_error_code"] == code and f"signal {int(signum)}" in update["pilot_error_diag"]


def test_server_tobekilled_kills_the_payload_with_1144(site, job_server):
    import httpx

    add_jobs(site, {
        "PandaID": 5200, "attemptNr": 1, "transformation": "bash", "jobPars": "-c 'touch started; sleep 120'",
        "outFiles": "l5200.tgz", "logFile": "l5200.tgz", "scopeLog": "demo.log",
    })
    pilot = start_pilot(site, job_server.url, "--heartbeat", "0.5")
    try:
        wait_for_file(site / "work" / "PanDA_Pilot-5200" / "started")
        reply = httpx.post(f"{job_server.url}/jobs/5200/command", json={"command": "tobekilled"}, timeout=10)
        assert reply.status_code == 200, reply.text
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, output[-3000:]
    update = final_update(job_server.jobs()[5200])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1144, update
    assert "l5200.tgz" in json.loads(update["job_output_report"])
    assert update["time"] - next(u for u in job_server.jobs()[5200]["updates"] if u["command"])["time"] < 15


def test_server_debug_command_sends_the_stdout_tail(site, job_server):
    import httpx

    add_jobs(site, {
        "PandaID": 5201, "attemptNr": 1, "transformation": "bash",
        "jobPars": "-c 'echo visible-in-debug; touch started; while [ ! -e go ]; do sleep 0.05; done'",
        "outFiles": "l5201.tgz", "logFile": "l5201.tgz", "scopeLog": "demo.log",
    })
    pilot = start_pilot(site, job_server.url, "--heartbeat", "0.3")
    workdir = site / "work" / "PanDA_Pilot-5201"
    try:
        wait_for_file(workdir / "started")
        httpx.post(f"{job_server.url}/jobs/5201/command", json={"command": "debug"}, timeout=10).raise_for_status()
        deadline = time.monotonic() + 20
        while not any("visible-in-debug" in (u.get("stdout") or "") for u in job_server.jobs()[5201]["updates"]):
            assert time.monotonic() < deadline, "no heartbeat with the stdout tail"
            time.sleep(0.1)
        (workdir / "go").touch()
        output, _ = pilot.communicate(timeout=60)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, output[-3000:]
    assert final_update(job_server.jobs()[5201])["job_status"] == "finished"
