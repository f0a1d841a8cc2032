"""A declared output file present and above 500 GB (section 6: 1124).

Zero-size outputs (1191) are a matter for after the payload: a file may be empty while written."""

from __future__ import annotations

import asyncio

from nodepilot.errors import ErrorCode
from services.monitor.checks.base import Check, CheckContext, Firing, fmt_bytes, largest_file

DEFAULT_LIMIT_BYTES = 500 * 10**9  # the stricter reading of "500 GB"


class OutputSizeCheck(Check):
    name = "output_size"
    code = ErrorCode.OUTPUT_FILE_TOO_BIG
    period_s = 300.0

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES, period_s: float | None = None) -> None:
        super().__init__(period_s)
        self.limit_bytes = limit_bytes

    async def check(self, ctx: CheckContext) -> Firing | None:
        lfn, size = await asyncio.to_thread(largest_file, ctx.workdir, [f.lfn for f in ctx.job.outputs])
        return self.compare(f"output file {lfn}", size, self.limit_bytes, fmt=fmt_bytes)
