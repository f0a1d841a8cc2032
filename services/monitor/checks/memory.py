"""PSS of the payload's process tree above 2 x RAM per core x cores (section 6: 1235).

RAM per core: the job's minRamCount / coreCount (MB), else the queue's maxrss / corecount (MB);
neither known: no limit. The PSS comes from the runner's usage hash (``CheckContext.usage``)."""

from __future__ import annotations

from nodepilot.errors import ErrorCode
from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from nodepilot.values import measured
from services.monitor.checks.base import Check, CheckContext, Firing

FACTOR = 2


def limit_kb(job: Job, queuedata: QueueData) -> int | None:
    cores = max(job.core_count, 1)
    if job.min_ram_count and job.min_ram_count > 0:
        per_core_mb = job.min_ram_count / cores
    elif queuedata.maxrss_mb > 0:
        per_core_mb = queuedata.maxrss_mb / max(queuedata.corecount, 1)
    else:
        return None
    return int(FACTOR * per_core_mb * cores * 1024)


def fmt_kb(kb: float) -> str:
    return f"{kb / 1024:.0f} MB ({int(kb)} kB)"


class MemoryCheck(Check):
    name = "memory"
    code = ErrorCode.MEMORY_EXCEEDED
    period_s = 60.0

    def __init__(self, limit_kb: int | None, period_s: float | None = None) -> None:
        super().__init__(period_s)
        self.limit_kb = limit_kb

    async def check(self, ctx: CheckContext) -> Firing | None:
        if self.limit_kb is None:
            return self.compare("PSS", None, None)
        pss = measured((await ctx.usage()).get("pss_kb"))
        return self.compare("PSS of the payload's processes", pss, self.limit_kb, fmt=fmt_kb)
