"""The stager's Prometheus collectors, registered on the service's own registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)


class StagerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "nodepilot_stager_transfers", "Transfer attempts by direction (in|out), outcome (done|failed|direct) "
            "and mover (the URL scheme)", ("direction", "status", "mover"), registry=registry)
        self.bytes = Counter("nodepilot_stager_bytes", "Bytes moved by successful attempts",
                             ("direction", "mover"), registry=registry)
        self.seconds = Histogram("nodepilot_stager_transfer_seconds", "Duration of successful attempts",
                                 ("direction", "mover"), buckets=SECONDS_BUCKETS, registry=registry)
        self.in_flight = Gauge("nodepilot_stager_transfers_in_flight", "Files being copied now", registry=registry)
        self.retries = Counter("nodepilot_stager_retries", "Attempts repeated on the same endpoint after a "
                               "transient error", ("direction",), registry=registry)
        self.traces = Counter("nodepilot_stager_traces", "Trace records: spooled (every record, first), "
                              "then sent or dropped (refused by the trace server)",
                              ("outcome",), registry=registry)
        self.traces_spooled = Gauge("nodepilot_stager_traces_spooled",
                                    "Trace records waiting in Redis for the trace server", registry=registry)
