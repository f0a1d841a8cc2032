"""The event-service client. Until event-service support lands (issue 6) it only runs as a
service (health, status) so the pilot's shape is complete; the monitor fails event-service
jobs with 1228 and says why."""

from __future__ import annotations

from typing import Any

from nodepilot.service import Service


class EventClientService(Service):
    name = "eventclient"

    async def status(self) -> dict[str, Any]:
        return {"event_service": "not implemented yet", "ranges": {}}
