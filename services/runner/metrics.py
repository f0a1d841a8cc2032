"""The runner's Prometheus metrics, read from its state at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from nodepilot.metrics import ScrapeCollector, counter, gauge

if TYPE_CHECKING:
    from services.runner.execute import Ended


def exit_label(ended: Ended | None) -> str:
    """How a payload ended, as a label: its exit code, ``signal N``, or ``none`` (never started, lost)."""
    if ended is None:
        return "none"
    if ended.signal:
        return f"signal {ended.signal}"
    return str(ended.exit_code) if ended.exit_code is not None else "none"


def collector(running: Callable[[], int], exits: Mapping[str, int]) -> ScrapeCollector:
    """``running``: payloads running now; ``exits``: payloads ended so far, by ``exit_label``."""

    def produce() -> Iterable[Metric]:
        yield gauge("payloads_running", "Payloads running now", value=running())
        yield counter("payload_exits", "Payloads that ended, by exit code", ["code"],
                      {(code,): n for code, n in list(exits.items())})

    return ScrapeCollector(produce)
