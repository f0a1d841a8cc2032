"""The scrape-time collectors on their own: what they show for given service state."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from nodepilot.metrics import register_common
from nodepilot.panda.errors import ServerError
from services.eventclient.metrics import collector as eventclient_collector
from services.monitor.metrics import CountingClient
from services.runner.metrics import collector as runner_collector
from services.runner.metrics import exit_label


def scrape(*collectors: object) -> str:
    registry = CollectorRegistry()
    register_common(registry, "test", 0.0)
    for c in collectors:
        registry.register(c)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_event_ranges_by_state() -> None:
    text = scrape(eventclient_collector(lambda: {42: {"ready": 3, "running": 1, "reported_finished": 6}}))
    assert 'nodepilot_event_ranges{job_id="42",state="ready"} 3.0' in text
    assert 'nodepilot_event_ranges{job_id="42",state="reported_finished"} 6.0' in text
    assert "nodepilot_event_service_jobs 1.0" in text
    assert 'nodepilot_uptime_seconds{service="test"}' in text and "process_cpu_seconds_total" in text


def test_payload_exits_by_code() -> None:
    exits = {exit_label(SimpleNamespace(signal=None, exit_code=0)): 2,  # type: ignore[arg-type]
             exit_label(SimpleNamespace(signal=9, exit_code=None)): 1,  # type: ignore[arg-type]
             exit_label(None): 1}
    text = scrape(runner_collector(lambda: 0, exits))
    assert 'nodepilot_payload_exits_total{code="0"} 2.0' in text
    assert 'nodepilot_payload_exits_total{code="signal 9"} 1.0' in text
    assert 'nodepilot_payload_exits_total{code="none"} 1.0' in text
    assert "nodepilot_payloads_running 0.0" in text


def test_server_call_errors_are_counted_by_call() -> None:
    class Flaky:
        async def update_job(self, fields: dict) -> str:
            if fields.get("fail"):
                raise ServerError("503", retryable=True)
            return "ok"

    client = CountingClient(Flaky())
    assert asyncio.run(client.update_job({})) == "ok"
    with pytest.raises(ServerError):
        asyncio.run(client.update_job({"fail": True}))
    assert client.errors == {"update_job": 1}
