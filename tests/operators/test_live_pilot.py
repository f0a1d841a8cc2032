"""Operator tools against one real pilot running a long payload: ``nodepilot status``, ``/metrics``
on every service, the monitor's web page in a real headless browser, and JSON logs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nodepilot.http import uds_client
from tests.e2e.conftest import JobServer, add_jobs, final_update, start_job_server
from tests.operators.helpers import GROWING_PAYLOAD, NODEPILOT, Pilot, finish, free_port, job, queuedata, start_pilot

KILLED_ID = 4100  # killed by the watchdog (wall time) before the long one starts
PANDA_ID = 4101
CHROMIUM = Path("/usr/bin/chromium")
# as /work/.library/env/machines/python.md says: no sandbox as root, no network beyond loopback
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobServer]:
    base = tmp_path_factory.mktemp("server")
    (base / "jobs").mkdir()
    add_jobs(base, job(KILLED_ID, "sleep", "30", maxWalltime=1),
             job(PANDA_ID, "python3", f"-c {shlex.quote(GROWING_PAYLOAD)}"))
    running = start_job_server(base / "jobs", base)
    yield running
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory, server: JobServer) -> Iterator[Pilot]:
    base = tmp_path_factory.mktemp("live")
    (base / "se").mkdir()
    queue = queuedata(base, base / "se", watchdog={"sample_interval_s": 0.2, "period_s": 0.5})
    running = start_pilot(base, None, "--log-format", "json", queue=queue, web_port=free_port(), server=server.url)
    try:
        running.wait_for(lambda s: s.get("current_job") == PANDA_ID and s.get("current_state") == "running"
                         and s.get("checks"), "the second job's payload running")
        yield running
    finally:
        release(running)
        finish(running)


def release(pilot: Pilot) -> None:
    workdir = pilot.workdir / f"PanDA_Pilot-{PANDA_ID}"
    if workdir.exists():
        (workdir / "release").touch()


def test_status_once_shows_the_running_job_and_its_checks(pilot: Pilot) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([*NODEPILOT, "status", "--run-dir", str(pilot.run_dir), "--once"], capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # while a payload runs, what stages files and serves event ranges is not running (nodepilot/demand.py)
    assert "services up: monitor, runner" in text and "idle (started when needed): stager, eventclient" in text
    job_row = next(line for line in text.splitlines() if f"│ {PANDA_ID}" in line and "running" in line)
    assert "payload" in job_row  # the step
    for check in ("looping", "memory", "walltime", "disk_space"):
        assert check in text
    assert "payloads" in text and "transfers" in text and "event ranges" in text


def test_status_without_a_pilot_says_so(tmp_path: Path) -> None:
    result = subprocess.run([*NODEPILOT, "status", "--run-dir", str(tmp_path), "--once"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "no running pilot" in result.stdout


def metrics(pilot: Pilot, service: str) -> str:
    with uds_client(pilot.run_dir / f"{service}.sock", timeout=5) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200
    return reply.text


def test_metrics_on_every_running_service(pilot: Pilot) -> None:
    for service in ("stager", "eventclient"):  # idle while the payload runs: no process, no socket
        assert not (pilot.run_dir / f"{service}.sock").exists()
    for service in ("monitor", "runner"):
        text = metrics(pilot, service)
        assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text, service
        assert f'nodepilot_uptime_seconds{{service="{service}"}}' in text
    monitor = metrics(pilot, "monitor")
    assert 'nodepilot_jobs{state="running"} 1.0' in monitor
    assert 'nodepilot_jobs_ended_total{pilot_error_code="1213",status="failed"} 1.0' in monitor
    assert 'nodepilot_check_firings_total{check="walltime"} 1.0' in monitor
    lag = next(line for line in monitor.splitlines() if line.startswith("nodepilot_heartbeat_lag_seconds "))
    assert 0 <= float(lag.split()[1]) < 120
    delivered = next(line for line in monitor.splitlines() if line.startswith("nodepilot_updates_delivered_total"))
    assert float(delivered.split()[1]) >= 5  # the first job's starting, running, final...; the second's
    assert "nodepilot_check_firings_total" in monitor and "nodepilot_server_call_errors_total" in monitor
    runner = metrics(pilot, "runner")
    assert "nodepilot_payloads_running 1.0" in runner
    # the first job's, killed, counted by the runner that retired after it: the counts are the pilot's
    assert 'nodepilot_payload_exits_total{code="signal 15"} 1.0' in runner


def test_web_api_is_read_only_and_knows_only_its_jobs(pilot: Pilot) -> None:
    base = f"http://127.0.0.1:{pilot.web_port}"
    jobs = httpx.get(f"{base}/api/jobs", timeout=5).json()
    assert jobs["current"] == PANDA_ID and jobs["jobs"][-1]["step"] == "payload"
    assert httpx.get(f"{base}/api/jobs/999/usage", timeout=5).status_code == 404
    assert httpx.post(f"{base}/stop", timeout=5).status_code in (404, 405)  # no control over TCP
    assert httpx.get(f"{base}/ui/../../pilot.json", timeout=5).status_code == 404
    with uds_client(pilot.run_dir / "monitor.sock", timeout=5) as client:  # the same page on the socket
        assert "nodepilot monitor" in client.get("/ui/").text


def test_web_page_in_headless_chromium(pilot: Pilot) -> None:
    if not CHROMIUM.exists() and os.environ.get("CI") != "true":
        pytest.skip("Debian chromium is not installed (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{pilot.web_port}/ui/", timeout=15_000)
            row = page.locator(f'#jobs tbody tr[data-panda-id="{PANDA_ID}"]')
            row.wait_for(timeout=10_000)
            assert row.locator("td.state").inner_text() == "running"
            assert row.locator("td.step").inner_text() == "payload"
            steps = page.locator("#timing tbody tr").evaluate_all("rows => rows.map(r => r.dataset.step)")
            assert steps == ["getjob", "stagein", "payload", "stageout", "initial_setup", "setup"]
            page.wait_for_function("() => Number(document.querySelector('#rss-line')?.dataset.points) > 1",
                                   timeout=10_000)
            points = page.locator("#rss-line").get_attribute("points") or ""
            heights = {float(xy.split(",")[1]) for xy in points.split()}
            assert len(heights) > 1  # a curve, not a flat line: the payload's memory grows
            page.screenshot(path=str(pilot.base / "monitor-page.png"))
        finally:
            browser.close()


def test_pilot_ends_cleanly_with_json_logs(pilot: Pilot, server: JobServer) -> None:
    release(pilot)
    out = finish(pilot)
    assert pilot.process.returncode == 0, pilot.stderr.read_text()[-3000:]
    jobs = server.jobs()
    assert final_update(jobs[PANDA_ID])["job_status"] == "finished"
    killed = final_update(jobs[KILLED_ID])
    assert killed["job_status"] == "failed" and killed["pilot_error_code"] == 1213
    assert str(PANDA_ID) in out  # the summary table
    lines = [line for line in pilot.stderr.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "service", "message"} <= r.keys() for r in records)
    services = {r["service"] for r in records}
    assert {"monitor", "runner"} <= services
    about_job = [r for r in records if r.get("PandaID") == PANDA_ID]
    assert {r["service"] for r in about_job} >= {"monitor", "runner"}
    assert {"payload", "stageout"} <= {r.get("step") for r in about_job}

