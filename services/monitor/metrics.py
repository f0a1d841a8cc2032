"""The monitor's Prometheus metrics: jobs, heartbeats, watchdog firings and server call errors.

All but the server errors are read from the pilot's state at scrape time; the server errors are
counted by a thin wrapper around the pilot's server client (``CountingClient``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric

from nodepilot.metrics import ScrapeCollector, count_by, counter, gauge
from nodepilot.panda.errors import ServerError

if TYPE_CHECKING:
    from services.monitor.pilot import Pilot


class CountingClient:
    """The pilot's server client, counting the calls that raised ServerError, by call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.errors: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_") or name in ("aclose", "__aenter__", "__aexit__"):
            return attr
        return self._counted(name, attr)

    def _counted(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await call(*args, **kwargs)
            except ServerError:
                self.errors[name] += 1
                raise

        return counted


def jobs(pilot: Pilot) -> list[dict[str, Any]]:
    """Every job of this pilot, finished or not: the recorded results and the running jobs'."""
    views = [dict(r) for r in pilot.results]
    views += [{**asdict(run.result), "step": run.step, "current": True} for run in pilot.running.values()]
    return views


def collector(pilot: Pilot, client: CountingClient) -> ScrapeCollector:
    def produce() -> Iterable[Metric]:
        all_jobs = jobs(pilot)
        yield gauge("jobs", "Jobs of this pilot by state", ["state"],
                    count_by(all_jobs, lambda j: (str(j.get("state") or "unknown"),)))
        ended = [j for j in all_jobs if j.get("state") in ("finished", "failed", "rejected")]
        yield counter("jobs_ended", "Jobs ended, by final status and pilot error code", ["status", "pilot_error_code"],
                      count_by(ended, lambda j: (str(j["state"]), str(j.get("pilot_error_code") or 0))))
        yield counter("check_firings", "Watchdog checks that fired (and killed the payload), by check", ["check"],
                      count_by([j for j in all_jobs if j.get("watchdog_check")], lambda j: (j["watchdog_check"],)))
        yield gauge("heartbeat_lag_seconds", "Seconds since the last update the server took",
                    value=time.monotonic() - pilot.outbox.last_delivery)
        yield counter("updates_delivered", "Job updates the server took", [], {(): pilot.outbox.delivered})
        yield counter("server_call_errors", "Server calls that failed (each attempt), by call", ["call"],
                      {(call,): n for call, n in client.errors.items()})

    return ScrapeCollector(produce)


def install(pilot: Pilot) -> ScrapeCollector:
    """Count the pilot's server errors from now on; the collector of the monitor's metrics."""
    client = CountingClient(pilot.client)
    pilot.client = pilot.outbox.client = client  # type: ignore[assignment]
    return collector(pilot, client)
