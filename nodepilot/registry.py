"""Where each service's class lives. The launcher, the CLI and compose all start services from here."""

from __future__ import annotations

import importlib

from nodepilot.service import Service

SERVICE_CLASSES = {
    "monitor": "services.monitor.service:MonitorService",
    "runner": "services.runner.service:RunnerService",
    "stager": "services.stager.service:StagerService",
    "eventclient": "services.eventclient.service:EventClientService",
}


def service_class(name: str) -> type[Service]:
    try:
        module_name, _, attr = SERVICE_CLASSES[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_CLASSES)}") from None
    return getattr(importlib.import_module(module_name), attr)
