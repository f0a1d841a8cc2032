"""Prometheus metrics shared by every service, and the helpers services build their own with.

Every service has its own ``CollectorRegistry`` (``Service.metrics``, served at ``/metrics``).
``register_common`` puts in it what every service shows: the process's CPU, memory and file
descriptors (prometheus_client's process collector) and the service's uptime. Service-specific
metrics are read from the service's own state at scrape time (``ScrapeCollector``), so the
service's work never pays for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "nodepilot"


def register_common(registry: CollectorRegistry, service: str, started: float) -> None:
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    uptime = Gauge(f"{PREFIX}_uptime_seconds", "Seconds since the service started", ["service"],
                   registry=registry)
    uptime.labels(service).set_function(lambda: time.time() - started)


class ScrapeCollector(Collector):
    """Metrics computed by ``produce`` at each scrape from the service's in-memory state."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self.produce = produce

    def collect(self) -> Iterable[Metric]:
        return list(self.produce())


def gauge(name: str, doc: str, labels: Iterable[str] = (), samples: Mapping[tuple[str, ...], float] | None = None,
          value: float | None = None) -> GaugeMetricFamily:
    """A gauge family: one ``value`` without labels, or one sample per label tuple."""
    if value is not None:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    for key, number in (samples or {}).items():
        family.add_metric(list(key), number)
    return family


def counter(name: str, doc: str, labels: Iterable[str],
            samples: Mapping[tuple[str, ...], float]) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``) with one sample per label tuple."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    for key, number in samples.items():
        family.add_metric(list(key), number)
    return family


def count_by(items: Iterable[Any], key: Callable[[Any], tuple[str, ...]]) -> dict[tuple[str, ...], float]:
    counts: dict[tuple[str, ...], float] = {}
    for item in items:
        k = key(item)
        counts[k] = counts.get(k, 0) + 1
    return counts
