"""The fields every work request carries (docs/bus.md), checked in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nodepilot.queue.model import Endpoint


class BadRequest(Exception):
    """A work request a service cannot act on; the message says what is wrong with it."""


def request_id_of(m: dict[str, Any]) -> str:
    request_id = m.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise BadRequest("no request_id")
    return request_id


def workdir_of(m: dict[str, Any]) -> Path:
    workdir = m.get("workdir")
    if not isinstance(workdir, str) or not os.path.isabs(workdir):
        raise BadRequest(f"workdir must be an absolute path, got {workdir!r}")
    return Path(workdir)


def endpoints_of(m: dict[str, Any]) -> list[Endpoint]:
    endpoints = m.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("url"), str) and e["url"]
            for e in endpoints):
        raise BadRequest(f"endpoints must be a list of {{name, url}}, got {endpoints!r:.200}")
    return [Endpoint(e["name"], e["url"]) for e in endpoints]
