"""The watchdog: runs the checks of services/monitor/checks each on its own period while a payload runs.

It ends at the first firing that asks for a kill, and then calls ``on_fire`` once with it; the
caller kills the payload and fails the job with the firing's code. A firing without ``kill`` is
only logged and shown in ``last_results``. A check that raises is logged and tried again at its
next period; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from services.monitor.checks import memory, workdir_size
from services.monitor.checks.base import Check, CheckContext, Firing
from services.monitor.checks.cputime import CputimeCheck
from services.monitor.checks.looping import DEFAULT_LIMIT_S as DEFAULT_LOOPING_S
from services.monitor.checks.looping import LoopingCheck
from services.monitor.checks.memory import MemoryCheck
from services.monitor.checks.sizes import DISK_SPACE, OUTPUT_SIZE, STDOUT_SIZE, SizeCheck
from services.monitor.checks.walltime import WalltimeCheck
from services.monitor.checks.workdir_size import WorkdirSizeCheck

log = logging.getLogger(__name__)

OnFire = Callable[[Firing], Awaitable[None]]


def _positive(value: int | None) -> float | None:
    return float(value) if value and value > 0 else None


def default_checks(job: Job, queuedata: QueueData) -> list[Check]:
    """Every check, with the limits of docs/protocol.md section 6 and those of the job and queue;
    the queue data's ``watchdog`` section may override a limit and the period of every check."""
    w = queuedata.watchdog
    period = w.get("period_s")
    mb = 1 << 20

    def given(key: str, default: Any, scale: float = 1) -> Any:
        return type(default)(w[key] * scale) if key in w else default

    checks: list[Check] = [
        LoopingCheck(given("looping_limit_s", DEFAULT_LOOPING_S)),
        SizeCheck(DISK_SPACE, given("disk_min_free_mb", DISK_SPACE.limit_bytes, mb)),
        WorkdirSizeCheck(workdir_size.limit_bytes(job, queuedata)),
        SizeCheck(STDOUT_SIZE, given("stdout_limit_mb", STDOUT_SIZE.limit_bytes, mb)),
        SizeCheck(OUTPUT_SIZE, given("output_limit_mb", OUTPUT_SIZE.limit_bytes, mb)),
        MemoryCheck(int(w["memory_limit_mb"] * 1024) if "memory_limit_mb" in w else memory.limit_kb(job, queuedata)),
        WalltimeCheck(_positive(job.max_walltime)),
        CputimeCheck(_positive(job.max_cpu_count)),
    ]
    if period:
        for check in checks:
            check.period_s = float(period)
    return checks


class Watchdog:
    def __init__(self, ctx: CheckContext, checks: Sequence[Check] | None = None, *, on_fire: OnFire) -> None:
        self.ctx = ctx
        self.checks = list(checks) if checks is not None else default_checks(ctx.job, ctx.queuedata)
        self.on_fire = on_fire
        self.last_results: dict[str, dict[str, Any]] = {}  # check name -> {ok, value, time[, diag, code, error]}
        self.fired: Firing | None = None

    async def run(self) -> Firing:
        """Until the first killing firing (returned, after ``on_fire``); cancel it to stop watching."""
        killing: asyncio.Future[Firing] = asyncio.get_running_loop().create_future()
        tasks = [asyncio.create_task(self._watch(check, killing), name=f"watchdog:{check.name}")
                 for check in self.checks]
        try:
            firing = await killing
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.fired = firing
        log.warning("job %s: watchdog check fired: %s: %s", self.ctx.job.panda_id, firing.code, firing.diag)
        try:
            await self.on_fire(firing)
        except Exception:
            log.exception("job %s: the watchdog's on_fire failed", self.ctx.job.panda_id)
        return firing

    async def _watch(self, check: Check, killing: asyncio.Future[Firing]) -> None:
        while not killing.done():
            firing = await self._run_check(check)
            if firing is not None and firing.kill:
                if not killing.done():
                    killing.set_result(firing)
                return
            await asyncio.sleep(check.period_s)  # the check's period: a timer, not a poll

    async def _run_check(self, check: Check) -> Firing | None:
        started = self.ctx.now()
        try:
            firing = await check.check(self.ctx)
        except Exception as exc:
            log.exception("job %s: watchdog check %s failed", self.ctx.job.panda_id, check.name)
            self.last_results[check.name] = {"ok": False, "value": None, "time": started, "error": repr(exc)}
            return None
        result: dict[str, Any] = {"ok": firing is None, "value": getattr(check, "value", None), "time": started}
        if firing is not None:
            result.update(diag=firing.diag, code=firing.code)
            if not firing.kill:
                log.warning("job %s: watchdog check %s: %s", self.ctx.job.panda_id, check.name, firing.diag)
        self.last_results[check.name] = result
        log.debug("job %s: watchdog check %s: %s", self.ctx.job.panda_id, check.name, result)
        return firing
