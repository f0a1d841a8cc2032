"""Free local disk of the work dir's file system while the payload runs (section 6: 1 GB, 1098)."""

from __future__ import annotations

import asyncio
import shutil

from nodepilot.errors import ErrorCode
from services.monitor.checks.base import GIB, Check, CheckContext, Firing, fmt_bytes

DEFAULT_MIN_FREE_BYTES = GIB  # the stricter reading of "1 GB"


class DiskSpaceCheck(Check):
    name = "disk_space"
    code = ErrorCode.DISK_SPACE
    period_s = 60.0

    def __init__(self, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, period_s: float | None = None) -> None:
        super().__init__(period_s)
        self.min_free_bytes = min_free_bytes

    async def check(self, ctx: CheckContext) -> Firing | None:
        free = (await asyncio.to_thread(shutil.disk_usage, ctx.workdir)).free
        return self.compare(f"free disk space of {ctx.workdir}", free, self.min_free_bytes, fmt=fmt_bytes,
                            below=True)
