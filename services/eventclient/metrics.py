"""The eventclient's Prometheus metrics: its jobs' event ranges by state, counted at scrape time
from the sessions' own bookkeeping (nothing on the ranges' path)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

from nodepilot.metrics import ScrapeCollector, gauge


def collector(range_counts: Callable[[], dict[int, dict[str, int]]]) -> ScrapeCollector:
    """``range_counts``: per job served now, its ranges by state."""

    def produce() -> Iterable[Metric]:
        jobs = range_counts()
        samples = {(str(job_id), state): float(n) for job_id, counts in jobs.items() for state, n in counts.items()}
        yield gauge("event_ranges", "Event ranges of the jobs served now, by state", ["job_id", "state"], samples)
        yield gauge("event_service_jobs", "Event-service jobs served now", value=len(jobs))

    return ScrapeCollector(produce)
