"""Fixtures shared by every test: a real Redis server, pilot configs, services as real processes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nodepilot.config import PilotConfig, QueueData
from nodepilot.http import uds_client
from nodepilot.redis_server import EmbeddedRedis, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def pilot_config(tmp_path: Path, redis_url: str) -> Iterator[PilotConfig]:
    """A config whose work and SE directories live in the test's tmp dir."""
    run_dir = Path(tempfile.mkdtemp(prefix="np-"))  # short: Unix socket paths have at most 107 bytes
    se_dir = tmp_path / "se"
    se_dir.mkdir()
    (tmp_path / "work").mkdir()
    cfg = PilotConfig(queue="LOCAL_TEST", site="LOCAL_TEST", run_dir=str(run_dir),
                      work_dir=str(tmp_path / "work"), redis_url=redis_url, se_dir=str(se_dir))
    cfg.queuedata = QueueData.default("LOCAL_TEST", se_dir)
    cfg.save()
    yield cfg
    shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def running_service(name: str, config: PilotConfig, timeout: float = 20.0) -> Iterator[subprocess.Popen]:
    """Start one service as a real process and wait until /healthz answers on its socket."""
    config.save()
    proc = subprocess.Popen([sys.executable, "-m", "nodepilot", "service", name, "-c", str(config.config_path)])
    try:
        wait_healthy(config.socket_path(name), proc, timeout)
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_healthy(sock: Path, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before it was healthy")
        if sock.exists():
            with contextlib.suppress(Exception), uds_client(sock, timeout=2) as c:
                if c.get("/healthz").status_code == 200:
                    return
        time.sleep(0.02)
    raise TimeoutError(f"no healthy service on {sock} within {timeout} s")


def read_events(r: redis.Redis, job_id: int, types: set[str], timeout: float = 30.0) -> list[dict]:
    """Block on a job's event stream (as the monitor does) until one of ``types`` arrives."""
    import json

    seen: list[dict] = []
    last = "0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = r.xread({f"job:{job_id}:events": last}, block=500)
        for _s, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                event = json.loads(fields["data"])
                seen.append(event)
                if event.get("type") in types:
                    return seen
    raise TimeoutError(f"none of {types} for job {job_id} within {timeout} s; saw {seen}")
