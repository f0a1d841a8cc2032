"""What a payload may ask of a job's event service, whatever the front-end it speaks (the HTTP API on
``events.sock``, ``api.py``, or the line protocol on two FIFOs, ``lines.py``): both call the same
``PayloadBackend`` (the job's session) and turn ``Refused`` into their own kind of error answer."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

MAX_RANGES_PER_CALL = 1000


class Refused(Exception):
    """A payload request that cannot be served as asked: ``status`` (HTTP's codes) with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class DoneBody(BaseModel):
    output: str = Field(description="the range's output file, a name in the job's work dir")
    cpu_s: float | None = None
    wall_s: float | None = None
    n_events: int | None = None
    next: int = Field(0, ge=0, le=MAX_RANGES_PER_CALL, description="hand out this many more ranges in the answer")


class FailedBody(BaseModel):
    error_code: int | None = None
    diag: str | None = None


class PayloadBackend(Protocol):
    async def take(self, n: int) -> list[dict[str, Any]]: ...
    async def done(self, range_id: str, body: DoneBody) -> dict[str, Any]: ...
    async def fail(self, range_id: str, body: FailedBody) -> dict[str, Any]: ...
    def states(self) -> dict[str, Any]: ...
    async def softkill(self) -> dict[str, Any]: ...
