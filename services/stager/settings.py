"""The stager's knobs, read once from the queue data (``QueueData`` flags and its ``stager`` dict).

A value of the wrong type or out of range falls back to the default with a warning: a bad queue
data file never stops the stager.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from nodepilot.deadlines import STAGER_ATTEMPTS, STAGER_BACKOFF_CAP_S
from nodepilot.queue.model import Endpoint, QueueData
from nodepilot.values import flag

log = logging.getLogger(__name__)

LOG_SE_ACTIVITY = "log_se"
# name -> (minimum, maximum) for the numbers of the queue data's ``stager`` dict
BOUNDS: dict[str, tuple[float, float]] = {
    "attempts": (1, 20),
    "backoff_s": (0.0, 600.0),
    "backoff_cap_s": (0.0, 3600.0),
    "files_per_request": (1, 64),
    "transfers_per_pilot": (1, 256),
    "trace_timeout_s": (0.1, 30.0),
    "trace_retry_cap_s": (0.01, 3600.0),
    "copysetup_timeout_s": (1.0, 3600.0),
}


@dataclass(frozen=True)
class StagerSettings:
    attempts: int = STAGER_ATTEMPTS  # per endpoint, on transient errors only
    backoff_s: float = 1.0  # first retry's pause; doubles per retry, with jitter
    backoff_cap_s: float = STAGER_BACKOFF_CAP_S
    files_per_request: int = 4
    transfers_per_pilot: int = 8  # over every request at once
    trace_url: str = ""  # empty: no traces
    trace_timeout_s: float = 3.0
    trace_retry_cap_s: float = 60.0  # longest pause between two delivery tries while the trace server is down
    copysetup_timeout_s: float = 60.0
    copysetup: str = ""
    allow_alt_stageout: bool = False
    direct_access_lan: bool = False
    direct_access_wan: bool = False
    log_se: tuple[Endpoint, ...] = ()
    storages: tuple[Endpoint, ...] = ()  # every endpoint the queue names (a job's ddmEndPointOut, by name)

    @classmethod
    def from_queue(cls, queue: QueueData) -> StagerSettings:
        raw = queue.stager if isinstance(queue.stager, dict) else {}
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            if f.name in BOUNDS and f.name in raw:
                values[f.name] = _number(f.name, raw[f.name], getattr(defaults, f.name))
        url = raw.get("trace_url", "")
        good_url = url == "" or (isinstance(url, str) and url.startswith(("http://", "https://")))
        values["trace_url"] = url if good_url else _bad("trace_url", url, "")
        copysetup = queue.copysetup or ""
        values["copysetup"] = copysetup if isinstance(copysetup, str) else _bad("copysetup", copysetup, "")
        for name in ("allow_alt_stageout", "direct_access_lan", "direct_access_wan"):
            values[name] = flag(getattr(queue, name, False))
        values["log_se"] = tuple(queue.endpoints.get(LOG_SE_ACTIVITY) or ())
        values["storages"] = tuple({e.name: e for eps in queue.endpoints.values() for e in eps}.values())
        return cls(**values)

    def storage(self, name: str) -> Endpoint | None:
        return next((e for e in self.storages if e.name == name), None)

    def direct_access(self, activity: str) -> bool:
        """Whether the queue lets inputs of this activity be read in place."""
        return self.direct_access_wan if activity.endswith("_wan") else self.direct_access_lan


def _number(name: str, value: Any, default: float) -> float:
    low, high = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return _bad(name, value, default)
    return type(default)(value)


def _bad(name: str, value: Any, default: Any) -> Any:
    log.warning("queue data: stager setting %s=%r is not valid; using %r", name, value, default)
    return default
