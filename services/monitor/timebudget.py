"""The slot's time budget: warn the payload some minutes before the slot ends, then stop it early
enough to stage out what it completed (reported as a partial result, not a bare failure).

Every payload is warned by a file in its work dir, whose path it has from the start in
``NODEPILOT_TIME_WARNING`` (the file appears at the warning). The warning signal (SIGUSR1 by default),
whose default action kills a process, goes only to a payload declared to handle it: by its job
definition (``handlesTimeSignal``), else the experiment plug-in (``handles_time_signal``), else the
queue data (``watchdog.time_budget_signal_handled``); nobody saying so means no signal.

The slot ends at the earliest of: the pilot's start + ``--lifetime``, + the queue's ``maxtime``,
and the batch system's end time when it tells one (``SLURM_JOB_END_TIME``, or ``NODEPILOT_SLOT_END``
set by a wrapper, both in epoch seconds). Two timers, no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodepilot.config import PilotConfig
from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from nodepilot.timeutil import panda_time
from nodepilot.values import flag_or_none

log = logging.getLogger(__name__)

DEFAULT_WARN_S = 600.0  # warn the payload this long before the slot ends
DEFAULT_STOP_S = 300.0  # stop it this long before: the time to stage out and report
END_TIME_VARIABLES = ("NODEPILOT_SLOT_END", "SLURM_JOB_END_TIME")
WARNING_FILE = "nodepilot_time_warning.json"  # in the job's work dir; its path in NODEPILOT_TIME_WARNING
JOB_KEY = "handlesTimeSignal"  # job definition: the payload handles the warning signal (yes/no)
QUEUE_KEY = "time_budget_signal_handled"  # queue data watchdog: this queue's payloads handle it (yes/no)


def signal_handled(job: Job, queuedata: QueueData, experiment: Any) -> tuple[bool, str]:
    """Whether the payload is declared to handle the warning signal, and who said so (the job
    definition, then the experiment plug-in, then the queue data; nobody: no)."""
    said = flag_or_none(job.raw.get(JOB_KEY))
    if said is not None:
        return said, f"the job definition ({JOB_KEY})"
    hook = getattr(experiment, "handles_time_signal", None)
    said = hook(job, queuedata) if hook is not None else None
    if said is not None:
        return bool(said), f"the experiment plug-in {getattr(experiment, 'name', '?')}"
    said = flag_or_none(queuedata.watchdog.get(QUEUE_KEY))
    if said is not None:
        return said, f"the queue data (watchdog.{QUEUE_KEY})"
    return False, "nobody declared that the payload handles it"


def write_warning(workdir: Path, budget: TimeBudget) -> Path:
    """The warning file, written whole (a payload that sees it can read it)."""
    path = workdir / WARNING_FILE
    now = time.time()
    text = json.dumps({"slot_end": round(budget.end), "slot_end_utc": panda_time(budget.end),
                       "stop_at": round(budget.stop_at), "stop_at_utc": panda_time(budget.stop_at),
                       "seconds_left": round(budget.end - now), "seconds_to_stop": round(budget.stop_at - now)})
    partial = path.with_suffix(".part")
    partial.write_text(text + "\n")
    partial.replace(path)
    return path


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
