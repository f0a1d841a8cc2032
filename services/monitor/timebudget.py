"""The slot's time budget: warn the payload some minutes before the slot ends, then stop it early
enough to stage out what it completed (reported as a partial result, not a bare failure).

The slot ends at the earliest of: the pilot's start + ``--lifetime``, + the queue's ``maxtime``,
and the batch system's end time when it tells one (``SLURM_JOB_END_TIME``, or ``NODEPILOT_SLOT_END``
set by a wrapper, both in epoch seconds). Two timers, no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nodepilot.config import PilotConfig

log = logging.getLogger(__name__)

DEFAULT_WARN_S = 600.0  # warn the payload this long before the slot ends
DEFAULT_STOP_S = 300.0  # stop it this long before: the time to stage out and report
END_TIME_VARIABLES = ("NODEPILOT_SLOT_END", "SLURM_JOB_END_TIME")


def slot_end(config: PilotConfig, launched_at: float) -> float | None:
    """Epoch at which the slot ends (None: no limit known)."""
    ends = [launched_at + x for x in (config.lifetime_s, config.queuedata.maxtime_s) if x and x > 0]
    for name in END_TIME_VARIABLES:
        with contextlib.suppress(KeyError, ValueError):
            value = float(os.environ[name])
            if value > 0:
                ends.append(value)
    return min(ends) if ends else None


@dataclass(frozen=True)
class TimeBudget:
    end: float  # epoch of the slot's end
    warn_s: float = DEFAULT_WARN_S
    stop_s: float = DEFAULT_STOP_S

    @classmethod
    def of(cls, config: PilotConfig, launched_at: float) -> TimeBudget | None:
        end = slot_end(config, launched_at)
        if end is None:
            return None
        w = config.queuedata.watchdog
        stop_s = float(w.get("time_budget_stop_s", DEFAULT_STOP_S))
        return cls(end, max(float(w.get("time_budget_warn_s", DEFAULT_WARN_S)), stop_s), stop_s)

    @property
    def warn_at(self) -> float:
        return self.end - self.warn_s

    @property
    def stop_at(self) -> float:
        return self.end - self.stop_s

    async def watch(self, on_warn: Callable[[], Awaitable[None]], on_stop: Callable[[], Awaitable[None]]) -> None:
        """Sleep until the warning, warn, sleep until the stop, stop; cancel it when the payload ends."""
        await asyncio.sleep(max(0.0, self.warn_at - time.time()))
        log.warning("the slot ends in %.0f s: warning the payload", self.end - time.time())
        await on_warn()
        await asyncio.sleep(max(0.0, self.stop_at - time.time()))
        log.warning("the slot ends in %.0f s: stopping the payload", self.end - time.time())
        await on_stop()
