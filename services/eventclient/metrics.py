"""The eventclient's Prometheus metrics: its jobs' event ranges by state, counted at scrape time
from the sessions' own bookkeeping (nothing on the ranges' path)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from nodepilot.metrics import ScrapeCollector, gauge

if TYPE_CHECKING:
    from services.eventclient.service import EventClientService


def collector(service: EventClientService) -> ScrapeCollector:
    def produce() -> Iterable[Metric]:
        samples: dict[tuple[str, ...], float] = {}
        for job_id, session in list(service.sessions.items()):
            for state, n in session.counts().items():
                samples[(str(job_id), state)] = n
        yield gauge("event_ranges", "Event ranges of the jobs served now, by state", ["job_id", "state"], samples)
        yield gauge("event_service_jobs", "Event-service jobs served now", value=len(service.sessions))

    return ScrapeCollector(produce)
