"""The payload's stdout or stderr above 2 GiB (section 6: 1106)."""

from __future__ import annotations

import asyncio

from nodepilot.errors import ErrorCode
from nodepilot.reports import STDERR, STDOUT
from services.monitor.checks.base import GIB, Check, CheckContext, Firing, fmt_bytes, largest_file

DEFAULT_LIMIT_BYTES = 2 * GIB


class StdoutSizeCheck(Check):
    name = "stdout_size"
    code = ErrorCode.STDOUT_TOO_BIG
    period_s = 60.0

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES, period_s: float | None = None) -> None:
        super().__init__(period_s)
        self.limit_bytes = limit_bytes

    async def check(self, ctx: CheckContext) -> Firing | None:
        name, size = await asyncio.to_thread(largest_file, ctx.workdir, (STDOUT, STDERR))
        return self.compare(f"size of {name}", size, self.limit_bytes, fmt=fmt_bytes)
