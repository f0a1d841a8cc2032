"""The front-end and its compute-node workers: every server call of a worker goes through the front-end's
Redis; updates are stored there and forwarded; one event-service job is shared by two workers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx

from nodepilot import bus
from nodepilot.panda import relay
from nodepilot.panda.relay import RelayClient
from tests.conftest import stop_process
from tests.e2e.conftest import EXAMPLES, NODEPILOT, add_jobs, final_update
from tests.e2e.test_event_service import assert_settled_once, es_job, ranges
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until


def run_frontend(site: Path, server_url: str, redis_url: str, *extra: str, timeout: float = 60
                 ) -> subprocess.CompletedProcess:
    return subprocess.run([*NODEPILOT, "frontend", "--server", server_url, "--redis-url", redis_url,
                           "--workdir", str(site / "work"), "--se-dir", str(site / "se"), *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_two_workers_share_one_event_service_job(site, job_server, redis_url, monkeypatch):
    monkeypatch.setenv("NODEPILOT_ISOLATION_BINDS", str(EXAMPLES))  # the payload's directory, in its sandbox
    add_jobs(site, {**es_job(7001, "--sleep 0.15"), "_event_ranges": ranges(60)})
    result = run_frontend(site, job_server.url, redis_url, "--launch", "local", "--workers", "2", "--jumbo", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held until every share ended" in result.stderr and "one merged final update" in result.stderr
    job = job_server.jobs()[7001]
    finals = [u for u in job["updates"] if u["job_status"] in ("finished", "failed")]
    assert len(finals) == 1, finals  # sent once, when both were done
    settled = assert_settled_once(job_server, 7001, site / "se")  # no range lost, none twice
    assert len(settled["finished"]) == 60
    assert finals[0]["job_status"] == "finished" and finals[0]["n_events"] == 600
    counts = []
    for stdout in sorted((site / "work").glob("*-w*/PanDA_Pilot-7001/payload.stdout")):
        counts.append(int(re.search(r"no more ranges after (\d+)", stdout.read_text())[1]))
        assert stdout.stat().st_mtime <= finals[0]["time"]
    assert len(counts) == 2 and all(counts) and sum(counts) == 60, counts  # both workers had ranges
    report = json.loads(finals[0]["job_output_report"])
    assert {"es7001.log.tgz", "es7001_2.log.tgz"} <= set(report)  # each share's log, under its own name


def test_a_server_command_reaches_the_worker(site, job_server, redis_url):
    add_jobs(site, sleep_job(7101, 60))
    log = site / "frontend.log"
    with log.open("w") as out:  # a file, not a pipe: the workers' heartbeats log a lot
        frontend = subprocess.Popen([*NODEPILOT, "frontend", "--server", job_server.url, "--redis-url", redis_url,
                                     "--workdir", str(site / "work"), "--se-dir", str(site / "se"), "--launch",
                                     "local", "--worker-arg=--heartbeat", "--worker-arg=1"],
                                    stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: job_server.jobs().get(7101, {}).get("status") == "running", 20, "job 7101 running")
        httpx.post(f"{job_server.url}/jobs/7101/command", json={"command": "tobekilled"}, timeout=10)
        frontend.wait(30)
    finally:
        stop_process(frontend)
    assert frontend.returncode == 0, log.read_text()[-3000:]
    assert "server command tobekilled for worker" in log.read_text()
    update = final_update(job_server.jobs()[7101])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1144, update


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(site: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*NODEPILOT, "serve", "--jobs", str(site / "jobs"), "--db", str(site / "outage.sqlite"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _answers(port), 20, "job server")
    return proc


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_updates_are_stored_at_the_front_end_while_the_server_is_down(site, redis_url):
    add_jobs(site, sleep_job(7201, 1))
    port = free_port()
    server = serve(site, port)
    frontend = subprocess.Popen([*NODEPILOT, "frontend", "--server", f"http://127.0.0.1:{port}", "--redis-url",
                                 redis_url, "--workdir", str(site / "work")], stderr=subprocess.DEVNULL)
    client = RelayClient(redis_url, "test-worker", timeout_s=15)

    async def scenario() -> None:
        raw = await client.acquire_job({"siteName": "LOCAL_TEST"})
        assert raw is not None and raw["PandaID"] == 7201
        r = bus.connect(redis_url)  # bad input: answered, and the front-end goes on
        await bus.publish(r, relay.REQUESTS, {"id": "bad-1", "worker": "w", "method": "rm -rf", "args": []})
        answer = json.loads((await r.blpop([relay.reply_key("bad-1")], timeout=10))[1])
        assert answer["ok"] is False and "malformed" in answer["error"]
        await r.aclose()
        stop_process(server)
        t = time.monotonic()
        reply = await client.update_job({"jobId": 7201, "state": "running", "attemptNr": 1,
                                         "siteName": "LOCAL_TEST", "node": "cn01"})
        assert reply.raw["stored"] and time.monotonic() - t < 5  # stored at once, the server being down
        await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        server = serve(site, port)
        wait_until(lambda: any(u["job_status"] == "running" for u in httpx.get(
            f"http://127.0.0.1:{port}/jobs/7201", timeout=5).json()["updates"]), 20, "the update forwarded")
    finally:
        stop_process(frontend)
        stop_process(server)
    assert frontend.returncode == 128 + 15


def test_a_worker_with_forked_services_through_the_relay(site, job_server, redis_url):
    add_jobs(site, EXAMPLES / "jobs" / "01_hello.json")
    frontend = subprocess.Popen([*NODEPILOT, "frontend", "--server", job_server.url, "--redis-url", redis_url,
                                 "--workdir", str(site / "work")], stderr=subprocess.DEVNULL)
    try:  # the worker knows no server: only the front-end's Redis (its bus is a Redis of its own)
        worker = subprocess.run([*NODEPILOT, "start", "--api", "relay", "--redis-url", redis_url, "--workdir",
                                 str(site / "work" / "w1"), "--se-dir", str(site / "se")],
                                capture_output=True, text=True, timeout=60)
        assert worker.returncode == 0, worker.stderr[-3000:]
        wait_until(lambda: job_server.jobs()[1001]["status"] == "finished", 20, "the final update forwarded")
    finally:
        stop_process(frontend)
    assert final_update(job_server.jobs()[1001])["pilot_error_code"] == 0
