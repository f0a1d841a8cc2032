"""The monitor service: owner of job state, the pilot's loop, and its HTTP API."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.routing import BaseRoute

from nodepilot import demand
from nodepilot.service import Service
from nodepilot.webapi import json_route
from services.monitor import metrics, web
from services.monitor.pilot import Pilot

log = logging.getLogger(__name__)


class MonitorService(Service):
    name = "monitor"

    def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        launched = float(os.environ.get("NODEPILOT_LAUNCHED_AT", "0")) or None
        self.pilot = Pilot(config, self.redis, launched)
        self.threads = 8 + 3 * self.pilot.ledger.max_jobs  # each job's watchdog measures its work dir in threads

    def main(self) -> Coroutine[Any, Any, int]:
        demand.listen(self.demand_fd)  # the services its jobs' steps need are started for them (launcher only)
        return self.pilot.run()

    def workers(self) -> list[Coroutine[Any, Any, Any]]:
        return [web.serve_tcp(self.pilot, self.config.web_port)] if self.config.web_port else []

    def retire(self) -> None:
        """Never: the monitor runs for the pilot's whole life (nodepilot/demand.py); a stray SIGUSR2 is said."""
        log.warning("the monitor does not retire: SIGUSR2 ignored")

    def on_signal(self, signum: int) -> None:
        # not a stop: the pilot ends its job (kill, log out, final update), then main returns
        asyncio.get_running_loop().create_task(self.pilot.on_signal(signum))

    async def status(self) -> dict[str, Any]:
        current = self.pilot.current
        return {
            "current_job": current.job.panda_id if current else None,
            "current_state": current.result.state if current else None,
            "current_step": current.step if current else None,
            "checks": current.watchdog.last_results if current and current.watchdog else {},
            "running": [{"panda_id": run.job.panda_id, "state": run.result.state, "step": run.step,
                         "checks": run.watchdog.last_results if run.watchdog else {}}
                        for run in self.pilot.running.values()],
            "slots": self.pilot.ledger.status(),
            "jobs": self.pilot.results,
            "updates_delivered": self.pilot.outbox.delivered,
        }

    def add_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(metrics.install(self.pilot))

    def routes(self) -> list[BaseRoute]:
        async def stop(_request: Request) -> dict[str, Any]:
            await self.pilot.on_signal(15)
            return {"stopping": True}

        return [*web.routes(self.pilot), json_route("/stop", stop, methods=("POST",))]
