"""The payload running longer than the job's maxWalltime (section 6: 1213, "reached time limit")."""

from __future__ import annotations

from nodepilot.errors import ErrorCode
from services.monitor.checks.base import Check, CheckContext, Firing, fmt_seconds


class TimeLimitCheck(Check):
    """A limit in seconds (None: none), fired with 1213 (REACHEDMAXTIME)."""

    code = ErrorCode.WALL_TIME
    period_s = 60.0

    def __init__(self, limit_s: float | None, period_s: float | None = None) -> None:
        super().__init__(period_s)
        self.limit_s = limit_s


class WalltimeCheck(TimeLimitCheck):
    name = "walltime"

    async def check(self, ctx: CheckContext) -> Firing | None:
        return self.compare("payload wall time", ctx.now() - ctx.started, self.limit_s, fmt=fmt_seconds,
                            note=" (maxWalltime)")
