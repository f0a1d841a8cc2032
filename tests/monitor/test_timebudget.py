"""The slot's end and the two timers of the time budget."""

from __future__ import annotations

import asyncio
import time

from nodepilot.config import PilotConfig
from nodepilot.queue.model import QueueData
from services.monitor.timebudget import TimeBudget, slot_end


def config(lifetime: float = 0, maxtime: int = 0, **watchdog: float) -> PilotConfig:
    cfg = PilotConfig(queue="Q", lifetime_s=lifetime)
    cfg.queuedata = QueueData(name="Q", maxtime_s=maxtime, watchdog=dict(watchdog))
    return cfg


def test_the_slot_ends_at_the_earliest_known_end(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.delenv("NODEPILOT_SLOT_END", raising=False)
    assert slot_end(config(), 1000.0) is None
    assert slot_end(config(lifetime=3600), 1000.0) == 4600.0
    assert slot_end(config(lifetime=3600, maxtime=1800), 1000.0) == 2800.0
    monkeypatch.setenv("SLURM_JOB_END_TIME", "2000")
    assert slot_end(config(lifetime=3600, maxtime=1800), 1000.0) == 2000.0
    monkeypatch.setenv("SLURM_JOB_END_TIME", "garbage")
    assert slot_end(config(lifetime=3600), 1000.0) == 4600.0


def test_budget_margins_from_the_queue_data(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    budget = TimeBudget.of(config(lifetime=100, time_budget_warn_s=30, time_budget_stop_s=10), 0.0)
    assert budget is not None and (budget.warn_at, budget.stop_at) == (70.0, 90.0)
    late = TimeBudget.of(config(lifetime=100, time_budget_warn_s=5, time_budget_stop_s=10), 0.0)
    assert late is not None and late.warn_s == 10  # never warned after being stopped


def test_watch_warns_then_stops_on_time():
    calls: list[tuple[str, float]] = []

    async def main() -> None:
        start = time.time()
        budget = TimeBudget(end=start + 0.5, warn_s=0.4, stop_s=0.2)

        async def warn() -> None:
            calls.append(("warn", time.time() - start))

        async def stop() -> None:
            calls.append(("stop", time.time() - start))

        await asyncio.wait_for(budget.watch(warn, stop), 5)

    asyncio.run(main())
    assert [c[0] for c in calls] == ["warn", "stop"]
    assert 0.05 <= calls[0][1] < 0.5 and 0.25 <= calls[1][1] < 0.8, calls


def test_who_declares_that_the_payload_handles_the_warning_signal():
    from nodepilot.experiments.base import Experiment
    from nodepilot.job import parse_job
    from services.monitor.timebudget import signal_handled

    class Says(Experiment):
        name = "says"

        def __init__(self, answer: bool | None) -> None:
            self.answer = answer

        def handles_time_signal(self, job, queuedata):
            return self.answer

    def job(**fields: str):
        return parse_job({"PandaID": 1, "attemptNr": 1, "transformation": "true", **fields})

    quiet = QueueData(name="Q")
    handled = QueueData(name="Q", watchdog={"time_budget_signal_handled": "yes"})
    assert signal_handled(job(), quiet, Experiment()) == (False, "nobody declared that the payload handles it")
    assert signal_handled(job(), handled, Experiment())[0] is True
    assert signal_handled(job(), handled, Says(False)) == (False, "the experiment plug-in says")
    assert signal_handled(job(), quiet, Says(True))[0] is True
    assert signal_handled(job(handlesTimeSignal="no"), handled, Says(True))[0] is False  # the job's word first
    assert signal_handled(job(handlesTimeSignal="YES"), quiet, Experiment())[0] is True
    assert signal_handled(job(handlesTimeSignal="maybe"), quiet, Experiment())[0] is False  # no yes/no: not said
