"""What a payload may ask of a job's event service, whatever the front-end it speaks (the HTTP API on
``events.sock``, ``api.py``, or the line protocol on two FIFOs, ``lines.py``): both call the same
``PayloadBackend`` (the job's session) and turn ``Refused`` into their own kind of error answer."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from nodepilot.values import whole_number

MAX_RANGES_PER_CALL = 1000
MAX_REQUEST_ID = 128
REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID}}}")  # printable ASCII, no space: one word of a line
N = TypeVar("N", int, float)


class Refused(Exception):
    """A payload request that cannot be served as asked: ``status`` (HTTP's codes) with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Invalid(ValueError):
    """A malformed request body: the field and what is wrong with it (HTTP answers 422, lines 400)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

    def detail(self) -> list[dict[str, Any]]:
        """In the shape of FastAPI's validation errors."""
        return [{"type": "value_error", "loc": ["body", self.field], "msg": self.problem}]


# The two bodies are validated by hand rather than by pydantic models: they are two flat records, and
# pydantic would be the only reason for every pilot process to import it (~5 MB each; nodepilot/webapi.py).
# Numbers may come as JSON numbers or as text (the line protocol's words), as a lax validator takes them.
@dataclass(frozen=True)
class DoneBody:
    output: str  # the range's output file, a name in the job's work dir
    cpu_s: float | None = None
    wall_s: float | None = None
    n_events: int | None = None
    next: int = 0  # hand out this many more ranges in the answer
    request: str = ""  # the request id of that fetch (see ``request_id``)

    @classmethod
    def parse(cls, data: Any) -> DoneBody:
        fields = _record(data)
        output = fields.get("output")
        if not isinstance(output, str):
            raise Invalid("output", "a file name (text) is required")
        nxt = _number(fields, "next", int)
        if nxt is not None and not 0 <= nxt <= MAX_RANGES_PER_CALL:
            raise Invalid("next", f"must be from 0 to {MAX_RANGES_PER_CALL}, not {nxt}")
        return cls(output=output, cpu_s=_number(fields, "cpu_s", float), wall_s=_number(fields, "wall_s", float),
                   n_events=_number(fields, "n_events", int), next=nxt or 0,
                   request=request_id(fields.get("request")))


@dataclass(frozen=True)
class FailedBody:
    error_code: int | None = None
    diag: str | None = None

    @classmethod
    def parse(cls, data: Any) -> FailedBody:
        fields = _record(data)
        diag = fields.get("diag")
        if diag is not None and not isinstance(diag, str):
            raise Invalid("diag", "must be text")
        return cls(error_code=_number(fields, "error_code", int), diag=diag)


def request_id(value: Any) -> str:
    """The request id a payload may give a call that hands out ranges ("" if none): the same id
    again gets the ranges that call got, those still running, instead of new ones."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise Invalid("request", f"must be 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces")
    return value


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise Invalid("body", "not valid JSON") from None


def _record(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("body", "a JSON object is required")
    return data


def _number(fields: dict[str, Any], name: str, kind: type[N]) -> N | None:
    """An optional number: a JSON number, or text that reads as one (an integer takes no fraction)."""
    value = fields.get(name)
    if value is None:
        return None
    if kind is int:
        whole = whole_number(value)
        if whole is None:
            raise Invalid(name, f"must be an integer, not {str(value)[:50]!r}")
        return whole  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(name, "must be a number")
    try:
        number = float(value)
    except ValueError:
        raise Invalid(name, f"must be a number, not {str(value)[:50]!r}") from None
    if not math.isfinite(number):
        raise Invalid(name, "must be a finite number")
    return number  # type: ignore[return-value]


class PayloadBackend(Protocol):
    async def take(self, n: int, request: str = "") -> list[dict[str, Any]]: ...
    async def done(self, range_id: str, body: DoneBody) -> dict[str, Any]: ...
    async def fail(self, range_id: str, body: FailedBody) -> dict[str, Any]: ...
    def states(self) -> dict[str, Any]: ...
    async def softkill(self) -> dict[str, Any]: ...
