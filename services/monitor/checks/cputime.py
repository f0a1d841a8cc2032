"""CPU time of the payload's process tree above the job's maxCpuCount.

Error code: 1213 (``ErrorCode.WALL_TIME``, the reference pilot's REACHEDMAXTIME, "reached the time
limit"), the same as the wall-time check; the diag says it was the CPU time. Not 1204: that code
means the pilot received SIGXCPU from the batch system, which is not what happened here."""

from __future__ import annotations

from nodepilot.values import measured
from services.monitor.checks.base import CheckContext, Firing, fmt_seconds
from services.monitor.checks.walltime import TimeLimitCheck


class CputimeCheck(TimeLimitCheck):
    name = "cputime"

    async def check(self, ctx: CheckContext) -> Firing | None:
        if self.limit_s is None:
            return self.compare("CPU time", None, None)
        cpu = measured((await ctx.usage()).get("cpu_s"))
        return self.compare("CPU time of the payload's processes", cpu, self.limit_s, fmt=fmt_seconds,
                            note=" (maxCpuCount)")
