"""The watchdog runs its checks on their own periods and fires once, on the first killing check."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nodepilot import bus
from nodepilot.errors import ErrorCode
from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from services.monitor.checks.base import Check, CheckContext, Firing
from services.monitor.checks.walltime import WalltimeCheck
from services.monitor.watchdog import Watchdog, default_checks

PERIOD = 0.01


class Counting(Check):
    """Fires (with ``kill``) on its ``fire_at``-th run; never if None."""

    period_s = PERIOD

    def __init__(self, name: str, fire_at: int | None = None, kill: bool = True, code: int = 1) -> None:
        super().__init__()
        self.name, self.fire_at, self.kill, self.code = name, fire_at, kill, code
        self.runs = 0

    async def check(self, ctx: CheckContext) -> Firing | None:
        self.runs += 1
        self.value = self.runs
        if self.fire_at is not None and self.runs >= self.fire_at:
            return Firing(self.code, f"{self.name} fired at run {self.runs}", self.kill)
        return None


class Raising(Counting):
    async def check(self, ctx: CheckContext) -> Firing | None:
        self.runs += 1
        raise RuntimeError("broken check")


RUNS_AT_FIRING: dict[str, int] = {}  # the runs of each Counting check when on_fire was called


async def watch(tmp_path: Path, redis_url: str, checks: list[Check] | None, job: Job | None = None,
                started: float | None = None, settle: float = 0.0) -> tuple[Watchdog, list[Firing], Firing]:
    r = bus.connect(redis_url)
    fired: list[Firing] = []
    RUNS_AT_FIRING.clear()

    async def on_fire(firing: Firing) -> None:
        fired.append(firing)
        RUNS_AT_FIRING.update({c.name: c.runs for c in checks or [] if isinstance(c, Counting)})

    try:
        ctx = CheckContext(job or Job(601), tmp_path, QueueData(), time.time() if started is None else started, r)
        dog = Watchdog(ctx, checks, on_fire=on_fire)
        result = await asyncio.wait_for(dog.run(), 5)
        await asyncio.sleep(settle)  # time for a stray check task to show up, had one survived
        return dog, fired, result
    finally:
        await r.aclose()


def test_fires_once_for_the_first_killing_check(tmp_path, redis_url):
    ok, broken = Counting("ok"), Raising("broken")
    warning = Counting("warning", fire_at=1, kill=False, code=2)
    first, later = Counting("first", fire_at=5, code=ErrorCode.LOOPING_JOB), Counting("later", fire_at=500, code=3)
    dog, fired, result = asyncio.run(watch(tmp_path, redis_url, [ok, broken, warning, first, later], settle=0.1))
    assert fired == [result] and result.code == ErrorCode.LOOPING_JOB and "run 5" in result.diag
    assert dog.fired == result
    # the raising check and the warning went on being tried while the others ran
    assert broken.runs >= 3 and warning.runs >= 3 and ok.runs >= 3
    assert first.runs == 5
    results = dog.last_results
    assert results["ok"]["ok"] is True and results["ok"]["value"] == ok.runs
    assert results["broken"]["ok"] is False and "broken check" in results["broken"]["error"]
    assert results["warning"]["ok"] is False and results["warning"]["code"] == 2
    assert results["first"] == {"ok": False, "value": 5, "time": results["first"]["time"],
                                "diag": result.diag, "code": ErrorCode.LOOPING_JOB}
    assert all(isinstance(r["time"], float) for r in results.values())
    # stopped: no check ran in the 0.1 s (10 periods) after the firing was handed to on_fire
    assert {c.name: c.runs for c in (ok, broken, warning, first, later)} == RUNS_AT_FIRING, RUNS_AT_FIRING


def test_checks_run_on_their_own_periods(tmp_path, redis_url):
    fast, slow, killer = Counting("fast"), Counting("slow"), Counting("killer", fire_at=30)
    slow.period_s = 10.0  # runs once at the start, then waits
    asyncio.run(watch(tmp_path, redis_url, [fast, slow, killer]))
    assert slow.runs == 1 and fast.runs >= 20


def test_default_checks_fire_on_the_jobs_wall_time(tmp_path, redis_url):
    job = Job(602, max_walltime=60, max_cpu_count=3600, min_ram_count=2000)
    checks = default_checks(job, QueueData(maxwdir_mb=100))
    assert [c.name for c in checks] == ["looping", "disk_space", "workdir_size", "stdout_size", "output_size",
                                        "memory", "walltime", "cputime"]
    limits = {c.name: getattr(c, "limit_s", None) or getattr(c, "limit_kb", None) or getattr(c, "limit_bytes", None)
              for c in checks}
    assert limits["walltime"] == 60 and limits["cputime"] == 3600 and limits["memory"] == 2 * 2000 * 1024
    assert limits["workdir_size"] == 120 * 1024 * 1024 and limits["looping"] == 7200
    dog, fired, result = asyncio.run(watch(tmp_path, redis_url, None, job=job, started=time.time() - 100))
    assert fired == [result] and result.code == ErrorCode.WALL_TIME and "maxWalltime" in result.diag
    assert isinstance(dog.checks[-2], WalltimeCheck)
    assert dog.last_results["walltime"]["value"] >= 100


def test_no_limits_no_firing(tmp_path, redis_url):
    """Without job limits the defaults stay quiet: run() goes on until cancelled."""
    async def go() -> Watchdog:
        r = bus.connect(redis_url)
        try:
            ctx = CheckContext(Job(603), tmp_path, QueueData(), time.time() - 100, r)

            async def on_fire(firing: Firing) -> None:
                raise AssertionError(f"fired: {firing}")

            dog = Watchdog(ctx, on_fire=on_fire)
            task = asyncio.create_task(dog.run())
            while len(dog.last_results) < len(dog.checks):  # every check ran once (bounded by wait_for)
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return dog
        finally:
            await r.aclose()

    dog = asyncio.run(asyncio.wait_for(go(), 10))
    assert all(result["ok"] for result in dog.last_results.values()), dog.last_results
