"""Where each service's class lives. The launcher, the CLI and compose all start services from here."""

from __future__ import annotations

from nodepilot.plugins import import_spec
from nodepilot.service import Service

SERVICE_CLASSES = {
    "monitor": "services.monitor.service:MonitorService",
    "runner": "services.runner.service:RunnerService",
    "stager": "services.stager.service:StagerService",
    "eventclient": "services.eventclient.service:EventClientService",
}


def service_class(name: str) -> type[Service]:
    if name not in SERVICE_CLASSES:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_CLASSES)}")
    return import_spec(SERVICE_CLASSES[name])
