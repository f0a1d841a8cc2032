"""Looping job: no file in the work dir was modified for too long (docs/protocol.md section 6: 2 h, 1150)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodepilot.errors import ErrorCode
from nodepilot.usage import USAGE_FILE
from services.monitor.checks.base import MAX_SCAN_ENTRIES, Check, CheckContext, Firing, TreeScan, fmt_seconds

DEFAULT_LIMIT_S = 2 * 3600.0
# files the pilot itself keeps writing: they say nothing about the payload's progress
PILOT_FILES = frozenset({USAGE_FILE, f".{USAGE_FILE}.tmp"})


def newest_change(root: Path, since: float, ignore: frozenset[str], max_entries: int) -> tuple[float, bool]:
    """The newest mtime of a file under ``root``, stopping at the first one newer than ``since``;
    and whether the walk was cut short by ``max_entries``."""
    scan = TreeScan(root, max_entries)
    newest = 0.0
    for entry, stat in scan.files():
        if entry.name in ignore:
            continue
        newest = max(newest, stat.st_mtime)
        if newest > since:
            break
    return newest, scan.truncated


class LoopingCheck(Check):
    name = "looping"
    code = ErrorCode.LOOPING_JOB
    period_s = 600.0

    def __init__(self, limit_s: float = DEFAULT_LIMIT_S, period_s: float | None = None,
                 ignore: frozenset[str] = PILOT_FILES, max_entries: int = MAX_SCAN_ENTRIES) -> None:
        super().__init__(period_s)
        self.limit_s, self.ignore, self.max_entries = limit_s, ignore, max_entries

    async def check(self, ctx: CheckContext) -> Firing | None:
        if not ctx.job.looping_check:
            self.value = "disabled"
            return None
        now = ctx.now()
        newest, truncated = await asyncio.to_thread(newest_change, ctx.workdir, now - self.limit_s, self.ignore,
                                                    self.max_entries)
        idle = now - max(newest, ctx.started)
        if truncated and idle > self.limit_s:
            self.value = idle
            return None  # only a part of the work dir was seen: a recent file may be in the rest
        return self.compare("looping job: no file in the work dir was modified for", idle, self.limit_s,
                            fmt=fmt_seconds)
