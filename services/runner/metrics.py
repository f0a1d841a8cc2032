"""The runner's Prometheus metrics, read from its state at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from nodepilot.metrics import ScrapeCollector, counter, gauge

if TYPE_CHECKING:
    from services.runner.execute import Ended
    from services.runner.service import RunnerService


def exit_label(ended: Ended | None) -> str:
    """How a payload ended, as a label: its exit code, ``signal N``, or ``none`` (never started, lost)."""
    if ended is None:
        return "none"
    if ended.signal:
        return f"signal {ended.signal}"
    return str(ended.exit_code) if ended.exit_code is not None else "none"


def collector(runner: RunnerService) -> ScrapeCollector:
    def produce() -> Iterable[Metric]:
        yield gauge("payloads_running", "Payloads running now", value=len(runner.payloads))
        yield counter("payload_exits", "Payloads that ended, by exit code", ["code"],
                      {(code,): n for code, n in runner.exits.items()})

    return ScrapeCollector(produce)
