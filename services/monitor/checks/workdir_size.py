"""Work-dir size above the queue's maxwdir (or the job's maxDiskCount) + 20 % (section 6: 1104)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodepilot.errors import ErrorCode
from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from services.monitor.checks.base import MAX_SCAN_ENTRIES, MIB, Check, CheckContext, Firing, TreeScan, fmt_bytes

MARGIN = 1.2


def limit_bytes(job: Job, queuedata: QueueData) -> int | None:
    """maxwdir of the queue, else the job's maxDiskCount (both MB), plus 20 %; None: no limit."""
    mb = queuedata.maxwdir_mb or job.max_disk_count or 0
    return int(mb * MIB * MARGIN) if mb > 0 else None


def tree_size(root: Path, max_entries: int) -> tuple[int, bool]:
    """Bytes of the regular files under ``root`` (apparent sizes); and whether the walk was cut short."""
    scan = TreeScan(root, max_entries)
    return sum(stat.st_size for _entry, stat in scan.files()), scan.truncated


class WorkdirSizeCheck(Check):
    name = "workdir_size"
    code = ErrorCode.WORKDIR_TOO_BIG
    period_s = 300.0

    def __init__(self, limit_bytes: int | None, period_s: float | None = None,
                 max_entries: int = MAX_SCAN_ENTRIES) -> None:
        super().__init__(period_s)
        self.limit_bytes, self.max_entries = limit_bytes, max_entries

    async def check(self, ctx: CheckContext) -> Firing | None:
        if self.limit_bytes is None:
            self.value = None
            return None
        size, truncated = await asyncio.to_thread(tree_size, ctx.workdir, self.max_entries)
        # a cut-short walk gives a lower bound: enough to fire, never to clear
        note = f" (counted over the first {self.max_entries} entries only)" if truncated else ""
        return self.compare("work dir size", size, self.limit_bytes, fmt=fmt_bytes, note=note)
