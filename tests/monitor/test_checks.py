"""Each watchdog check against real files in tmp_path and a real Redis usage hash."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from nodepilot import bus
from nodepilot.errors import ErrorCode
from nodepilot.job import FileSpec, Job
from nodepilot.queue.model import QueueData
from nodepilot.usage import USAGE_FILE, usage_key
from services.monitor.checks import memory, workdir_size
from services.monitor.checks.base import Check, CheckContext, Firing
from services.monitor.checks.cputime import CputimeCheck
from services.monitor.checks.looping import LoopingCheck
from services.monitor.checks.memory import MemoryCheck
from services.monitor.checks.sizes import DISK_SPACE, OUTPUT_SIZE, STDOUT_SIZE, SizeCheck
from services.monitor.checks.walltime import WalltimeCheck
from services.monitor.checks.workdir_size import WorkdirSizeCheck
from services.runner.sampler import Sample

NOW = time.time()
JOB_ID = 501


def run_check(check: Check, wd: Path, redis_url: str, *, job: Job | None = None, started: float = NOW,
              now: float = NOW) -> Firing | None:
    async def go() -> Firing | None:
        r = bus.connect(redis_url)
        try:
            ctx = CheckContext(job or Job(JOB_ID), wd, QueueData(), started, r, clock=lambda: now)
            return await asyncio.wait_for(check.check(ctx), 10)
        finally:
            await r.aclose()

    return asyncio.run(go())


def write(path: Path, size: int, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def publish_usage(rds, **fields) -> None:
    rds.hset(usage_key(JOB_ID), mapping=Sample(NOW, **fields).hash_fields())


def assert_fires(firing: Firing | None, code: int, *words: str) -> None:
    assert firing is not None and firing.code == code and firing.kill
    for word in ("limit", *words):
        assert word in firing.diag, firing.diag


# --- looping ---------------------------------------------------------------------------------
def test_looping(tmp_path, redis_url):
    write(tmp_path / "a.log", 10, age_s=100)
    write(tmp_path / "sub" / "dir" / "b.dat", 10, age_s=90)
    write(tmp_path / USAGE_FILE, 10)  # the runner's own output: not the payload's progress
    check = LoopingCheck(limit_s=50)
    firing = run_check(check, tmp_path, redis_url, started=NOW - 200)
    assert_fires(firing, ErrorCode.LOOPING_JOB, "90 s", "50 s")
    assert check.value == pytest.approx(90, abs=1)
    # a payload that started less than the limit ago is not looping, whatever its files' age
    assert run_check(LoopingCheck(limit_s=50), tmp_path, redis_url, started=NOW - 10) is None
    assert run_check(LoopingCheck(limit_s=100), tmp_path, redis_url, started=NOW - 200) is None
    write(tmp_path / "sub" / "dir" / "fresh.dat", 1, age_s=5)
    assert run_check(LoopingCheck(limit_s=50), tmp_path, redis_url, started=NOW - 200) is None


def test_looping_disabled_and_bounded(tmp_path, redis_url):
    for i in range(5):
        write(tmp_path / f"f{i}", 1, age_s=1000)
    disabled = LoopingCheck(limit_s=50)
    assert run_check(disabled, tmp_path, redis_url, job=Job(JOB_ID, looping_check=False), started=0) is None
    assert disabled.value == "disabled"
    # only a part of the work dir seen: a recent file may be in the rest, so no verdict
    assert run_check(LoopingCheck(limit_s=50, max_entries=3), tmp_path, redis_url, started=0) is None
    assert_fires(run_check(LoopingCheck(limit_s=50, max_entries=10), tmp_path, redis_url, started=0),
                 ErrorCode.LOOPING_JOB)


# --- disk ------------------------------------------------------------------------------------
def test_disk_space(tmp_path, redis_url):
    check = SizeCheck(DISK_SPACE, limit_bytes=1 << 62)
    assert_fires(run_check(check, tmp_path, redis_url), ErrorCode.DISK_SPACE, "free disk space", "below")
    assert 0 < check.value < 1 << 62
    assert run_check(SizeCheck(DISK_SPACE, limit_bytes=1), tmp_path, redis_url) is None


# --- work dir size ---------------------------------------------------------------------------
def test_workdir_size(tmp_path, redis_url):
    for name in ("a", "b", "sub/c"):
        write(tmp_path / name, 100_000)
    check = WorkdirSizeCheck(limit_bytes=250_000)
    assert_fires(run_check(check, tmp_path, redis_url), ErrorCode.WORKDIR_TOO_BIG, "work dir size", "300000 B")
    assert check.value == 300_000
    assert run_check(WorkdirSizeCheck(limit_bytes=300_000), tmp_path, redis_url) is None
    unlimited = WorkdirSizeCheck(limit_bytes=None)
    assert run_check(unlimited, tmp_path, redis_url) is None and unlimited.value is None
    # a walk cut short counts a lower bound: enough to fire
    assert_fires(run_check(WorkdirSizeCheck(limit_bytes=150_000, max_entries=3), tmp_path, redis_url),
                 ErrorCode.WORKDIR_TOO_BIG, "200000 B", "first 3 entries")


def test_workdir_limit_from_queue_or_job():
    mib = 1024 * 1024
    assert workdir_size.limit_bytes(Job(1, max_disk_count=5), QueueData(maxwdir_mb=10)) == int(12 * mib)
    assert workdir_size.limit_bytes(Job(1, max_disk_count=5), QueueData()) == int(6 * mib)
    assert workdir_size.limit_bytes(Job(1), QueueData()) is None


# --- stdout / stderr -------------------------------------------------------------------------
def test_stdout_size(tmp_path, redis_url):
    assert run_check(SizeCheck(STDOUT_SIZE, limit_bytes=1000), tmp_path, redis_url) is None  # none written yet
    write(tmp_path / "payload.stdout", 800)
    assert run_check(SizeCheck(STDOUT_SIZE, limit_bytes=1000), tmp_path, redis_url) is None
    write(tmp_path / "payload.stderr", 1500)
    assert_fires(run_check(SizeCheck(STDOUT_SIZE, limit_bytes=1000), tmp_path, redis_url), ErrorCode.STDOUT_TOO_BIG,
                 "payload.stderr", "1500 B")
    write(tmp_path / "payload.stdout", 2000)
    assert_fires(run_check(SizeCheck(STDOUT_SIZE, limit_bytes=1000), tmp_path, redis_url), ErrorCode.STDOUT_TOO_BIG,
                 "payload.stdout", "2000 B")


# --- output files ----------------------------------------------------------------------------
def test_output_size(tmp_path, redis_url):
    job = Job(JOB_ID, outputs=[FileSpec("out.root"), FileSpec("other.root")], log=FileSpec("log.tgz"))
    write(tmp_path / "log.tgz", 5000)  # the log is not an output the payload writes
    write(tmp_path / "unrelated.bin", 5000)
    assert run_check(SizeCheck(OUTPUT_SIZE, limit_bytes=1000), tmp_path, redis_url, job=job) is None
    write(tmp_path / "out.root", 900)
    assert run_check(SizeCheck(OUTPUT_SIZE, limit_bytes=1000), tmp_path, redis_url, job=job) is None
    write(tmp_path / "other.root", 1200)
    assert_fires(run_check(SizeCheck(OUTPUT_SIZE, limit_bytes=1000), tmp_path, redis_url, job=job),
                 ErrorCode.OUTPUT_FILE_TOO_BIG, "other.root")


# --- memory ----------------------------------------------------------------------------------
def test_memory(tmp_path, redis_url, rds):
    assert run_check(MemoryCheck(limit_kb=200_000), tmp_path, redis_url) is None  # nothing sampled yet
    publish_usage(rds, pss_kb=150_000, rss_kb=300_000)
    assert run_check(MemoryCheck(limit_kb=200_000), tmp_path, redis_url) is None  # PSS counts, not RSS
    publish_usage(rds, pss_kb=250_000)
    check = MemoryCheck(limit_kb=200_000)
    assert_fires(run_check(check, tmp_path, redis_url), ErrorCode.MEMORY_EXCEEDED, "PSS", "250000 kB")
    assert check.value == 250_000
    assert run_check(MemoryCheck(limit_kb=None), tmp_path, redis_url) is None


def test_memory_limit_from_job_or_queue():
    assert memory.limit_kb(Job(1, min_ram_count=4000, core_count=2), QueueData(maxrss_mb=100)) == 2 * 4000 * 1024
    assert memory.limit_kb(Job(1, core_count=2), QueueData(maxrss_mb=8000, corecount=8)) == 2 * 1000 * 2 * 1024
    assert memory.limit_kb(Job(1), QueueData()) is None


def test_usage_as_read_by_a_check(rds, redis_url, tmp_path):
    rds.hset(usage_key(JOB_ID), mapping={**Sample(NOW, pss_kb=7, cpu_s=1.5, pids=[3, 4]).hash_fields()})

    async def go() -> dict:
        r = bus.connect(redis_url)
        try:
            return await CheckContext(Job(JOB_ID), tmp_path, QueueData(), NOW, r).usage()
        finally:
            await r.aclose()

    usage = asyncio.run(go())
    assert (usage["pss_kb"], usage["cpu_s"], usage["pids"], usage["time"]) == (7, 1.5, [3, 4], pytest.approx(NOW))


# --- wall and CPU time -----------------------------------------------------------------------
def test_walltime(tmp_path, redis_url):
    check = WalltimeCheck(limit_s=50)
    assert_fires(run_check(check, tmp_path, redis_url, started=NOW - 100), ErrorCode.WALL_TIME, "100 s", "50 s")
    assert check.value == pytest.approx(100)
    assert run_check(WalltimeCheck(limit_s=500), tmp_path, redis_url, started=NOW - 100) is None
    assert run_check(WalltimeCheck(limit_s=None), tmp_path, redis_url, started=0) is None


def test_cputime(tmp_path, redis_url, rds):
    assert run_check(CputimeCheck(limit_s=100), tmp_path, redis_url) is None  # nothing sampled yet
    publish_usage(rds, cpu_s=80.0)
    assert run_check(CputimeCheck(limit_s=100), tmp_path, redis_url) is None
    publish_usage(rds, cpu_s=120.5)
    assert_fires(run_check(CputimeCheck(limit_s=100), tmp_path, redis_url), ErrorCode.WALL_TIME,
                 "CPU time", "maxCpuCount")
    assert run_check(CputimeCheck(limit_s=None), tmp_path, redis_url) is None
