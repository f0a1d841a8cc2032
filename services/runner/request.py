"""Run, kill and signal requests as the runner reads them (docs/bus.md): typed, or BadRequest
saying what is wrong."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.requests import BadRequest, request_id_of, workdir_of
from services.runner.execute import payload_script
from services.runner.report import Outcome
from services.runner.sampler import DEFAULT_INTERVAL_S, MAX_INTERVAL_S, MIN_INTERVAL_S

__all__ = ["DEFAULT_GRACE_S", "BadRequest", "RunRequest", "failed", "grace", "parse_run"]

DEFAULT_GRACE_S = 10.0
MAX_GRACE_S = 3600.0


@dataclass
class RunRequest:
    request_id: str
    workdir: Path
    script: str
    env: dict[str, str]
    sample_interval: float = DEFAULT_INTERVAL_S
    image: str = ""  # the container image the payload asks for (the job's container_name)


def grace(value: Any) -> float:
    try:
        grace = float(value)
    except (TypeError, ValueError):
        return DEFAULT_GRACE_S
    return min(max(grace, 0.0), MAX_GRACE_S) if grace == grace else DEFAULT_GRACE_S


def failed(diag: str) -> Outcome:
    return Outcome(ErrorCode.SETUP_FAILED, clip_diag(diag))


def _text(m: dict[str, Any], name: str, required: bool = False) -> str:
    value = m.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{name} must be a {'non-empty ' if required else ''}string, got {value!r:.100}")
    if "\0" in value:
        raise BadRequest(f"{name} contains a NUL character")
    return value


def parse_run(m: dict[str, Any]) -> RunRequest:
    """A typed run request, or BadRequest saying what is wrong with it."""
    request_id = request_id_of(m)
    workdir = str(workdir_of(m))
    if not os.path.isdir(workdir):
        raise BadRequest(f"workdir {workdir} does not exist or is not a directory")
    script = payload_script(_text(m, "setup"), _text(m, "command", required=True), _text(m, "args"))
    env = m.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest(f"env must be an object, got {env!r:.100}")
    clean: dict[str, str] = {}
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise BadRequest(f"env has an invalid variable name {name!r:.100}")
        if isinstance(value, bool) or not isinstance(value, str | int | float) or "\0" in str(value):
            raise BadRequest(f"env variable {name} has an invalid value {value!r:.100}")
        clean[name] = str(value)
    return RunRequest(request_id, Path(workdir), script, clean, _interval(m.get("sample_interval")),
                      _text(m, "container"))


def _interval(value: Any) -> float:
    """The sampling period asked for (default 10 s), kept within [0.1 s, 1 h]."""
    if value is None:
        return DEFAULT_INTERVAL_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise BadRequest(f"sample_interval must be a positive number of seconds, got {value!r:.100}")
    return min(max(float(value), MIN_INTERVAL_S), MAX_INTERVAL_S)
