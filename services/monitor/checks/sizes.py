"""One threshold check, three settings: a size in bytes measured in the work dir against a limit
(docs/protocol.md section 6).

- ``STDOUT_SIZE``: the payload's stdout or stderr above 2 GiB: 1106;
- ``OUTPUT_SIZE``: a declared output present and above 500 GB: 1124 (a zero-size output, 1191, is a
  matter for after the payload: a file may be empty while written);
- ``DISK_SPACE``: free local disk of the work dir's file system below 1 GB while the payload runs: 1098.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from nodepilot.errors import ErrorCode
from nodepilot.reports import STDERR, STDOUT
from services.monitor.checks.base import GIB, Check, CheckContext, Firing, fmt_bytes, largest_file

Measure = Callable[[CheckContext], tuple[str, int | None]]  # (what was measured, bytes); run in a thread


@dataclass(frozen=True)
class SizeSetting:
    name: str
    code: int
    period_s: float
    limit_bytes: int  # the default limit
    measure: Measure
    below: bool = False  # fires below the limit (a minimum) instead of above it (a maximum)


def _largest_std_stream(ctx: CheckContext) -> tuple[str, int | None]:
    name, size = largest_file(ctx.workdir, (STDOUT, STDERR))
    return f"size of {name}", size


def _largest_output(ctx: CheckContext) -> tuple[str, int | None]:
    lfn, size = largest_file(ctx.workdir, [f.lfn for f in ctx.job.outputs])
    return f"output file {lfn}", size


def _free_disk(ctx: CheckContext) -> tuple[str, int | None]:
    return f"free disk space of {ctx.workdir}", shutil.disk_usage(ctx.workdir).free


STDOUT_SIZE = SizeSetting("stdout_size", ErrorCode.STDOUT_TOO_BIG, 60.0, 2 * GIB, _largest_std_stream)
OUTPUT_SIZE = SizeSetting("output_size", ErrorCode.OUTPUT_FILE_TOO_BIG, 300.0, 500 * 10**9, _largest_output)
DISK_SPACE = SizeSetting("disk_space", ErrorCode.DISK_SPACE, 60.0, GIB, _free_disk, below=True)


class SizeCheck(Check):
    def __init__(self, setting: SizeSetting, limit_bytes: int | None = None, period_s: float | None = None) -> None:
        super().__init__(setting.period_s if period_s is None else period_s)
        self.setting = setting
        self.name, self.code = setting.name, setting.code
        self.limit_bytes = setting.limit_bytes if limit_bytes is None else limit_bytes

    async def check(self, ctx: CheckContext) -> Firing | None:
        what, size = await asyncio.to_thread(self.setting.measure, ctx)
        return self.compare(what, size, self.limit_bytes, fmt=fmt_bytes, below=self.setting.below)
