"""Outages on demand, for tests and drills (not PanDA's): the job server answers its PanDA calls
with an HTTP error, as an overloaded server or its front proxy does, until the outage ends."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import HTMLResponse

ERROR_PAGE = """<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">
<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1>
<p>The server is temporarily unable to service your request. Please try again later.</p>
<hr><address>Apache Server at 127.0.0.1</address></body></html>
"""
REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Outage:
    status: int = 503
    until: float = 0.0  # monotonic; 0: only ``calls`` limits it
    calls: int = 0  # answer this many calls with the error (0: no limit within ``until``)
    methods: set[str] = field(default_factory=set)  # empty: every method
    retry_after: int | None = None
    answered: int = 0


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outage: Outage | None = None
        self.log: list[dict[str, Any]] = []  # the calls answered with an error

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``{"status": 503, "seconds": 5, "calls": 0, "methods": [...], "retry_after": 1}``."""
        status = int(spec.get("status", 503))
        if status not in REASONS:
            raise ValueError(f"status must be one of {sorted(REASONS)}")
        seconds, calls = float(spec.get("seconds", 0)), int(spec.get("calls", 0))
        if seconds <= 0 and calls <= 0:
            raise ValueError("give seconds > 0 or calls > 0")
        retry_after = spec.get("retry_after")
        outage = Outage(status, time.monotonic() + seconds if seconds > 0 else 0.0, calls,
                        {str(m) for m in spec.get("methods") or []},
                        int(retry_after) if retry_after is not None else None)
        with self._lock:
            self._outage = outage
        return {"status": status, "seconds": seconds, "calls": calls, "methods": sorted(outage.methods)}

    def stop(self) -> None:
        with self._lock:
            self._outage = None

    def answer(self, method: str) -> HTMLResponse | None:
        """The error reply for this call while an outage lasts, else None (serve it)."""
        with self._lock:
            outage = self._outage
            if outage is None or (outage.methods and method not in outage.methods):
                return None
            expired = outage.until and time.monotonic() >= outage.until
            if expired or (outage.calls and outage.answered >= outage.calls):
                self._outage = None
                return None
            outage.answered += 1
            self.log.append({"method": method, "status": outage.status, "time": time.time()})
        headers = {"Retry-After": str(outage.retry_after)} if outage.retry_after is not None else None
        page = ERROR_PAGE.format(status=outage.status, reason=REASONS[outage.status])
        return HTMLResponse(page, status_code=outage.status, headers=headers)
