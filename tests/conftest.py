"""Fixtures shared by every test: a real Redis server, pilot configs, services as real processes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# services as processes, shared with the benchmarks (bench/ imports nothing from tests/)
from bench.harness import read_events, running_service, stop_process, wait_healthy  # noqa: F401 (re-exported)
from nodepilot.config import PilotConfig
from nodepilot.queue.model import QueueData
from nodepilot.redis_server import EmbeddedRedis, start_redis

ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")


def allowed_skips() -> dict[str, str]:
    """``test path or node id prefix -> why`` from the list (``prefix | why`` lines, # comments)."""
    allowed = {}
    for line in ALLOWED_SKIPS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            prefix, _, why = line.partition("|")
            allowed[prefix.strip()] = why.strip()
    return allowed


def listed(nodeid: str, allowed: dict[str, str]) -> str | None:
    """The listed reason for a test, None if it is not listed."""
    for prefix, why in allowed.items():
        if nodeid == prefix or nodeid.startswith((prefix + "/", prefix + "::")):
            return why
    return None


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true a test that skips and is not in tests/allowed_skips.txt fails: CI has (or starts)
    every real component the tests need, so such a skip hides a missing install or start step."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get("CI", "").lower() != "true":
        return
    if listed(report.nodeid, allowed_skips()) is None:
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, and not listed in {ALLOWED_SKIPS.name}: "
                           f"{skip_reason(report)}")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Every test that skipped, why, and whether the list allows it under CI."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    allowed = allowed_skips()
    terminalreporter.section(f"skipped tests ({len(skipped)}; allowed under CI=true: tests/{ALLOWED_SKIPS.name})")
    for report in skipped:
        why = listed(report.nodeid, allowed)
        state = f"listed: {why}" if why is not None else "NOT listed: fails under CI=true"
        terminalreporter.write_line(f"{report.nodeid}: {skip_reason(report)} [{state}]")


@pytest.fixture(autouse=True)
def keep_job_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pilots the tests start keep their jobs' dirs (the tests look at what the payloads left there); the
    removal itself is tested with this variable taken away (tests/e2e/test_left_behind.py)."""
    monkeypatch.setenv("NODEPILOT_KEEP_WORKDIRS", "1")


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
                      work_dir=str(tmp_path / "work"), redis_url=redis_url, se_dir=str(se_dir), keep_workdirs=True)
    cfg.queuedata = QueueData.default("LOCAL_TEST", se_dir)
    cfg.save()
    yield cfg
    shutil.rmtree(run_dir, ignore_errors=True)


