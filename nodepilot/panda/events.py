"""Event ranges (docs/protocol.md section 4): the shapes both dialects, the standalone client and
the local server share."""

from __future__ import annotations

import json
from typing import Any

from nodepilot.panda.errors import ServerError
from nodepilot.panda.http import decode_value

EVENT_STATUSES = ("running", "transferring", "finished", "failed", "fatal")
# what a range may be at the server (get_event_range_statuses); "sent" and "running": handed out, not settled
SERVER_STATUSES = ("ready", "sent", "running", "finished", "cancelled", "discarded", "done", "failed", "fatal",
                   "merged", "corrupted")


def ranges_from_reply(what: str, value: Any) -> list[dict[str, Any]]:
    """The ranges handed out: a list of range objects, possibly sent as JSON text."""
    ranges = decode_value(value)
    if ranges is None or ranges == "":
        return []
    if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges):
        raise ServerError(f"{what}: event ranges are not a list of objects: {str(value)[:200]!r}", retryable=True)
    return ranges


def encode_updates(ranges: list[dict[str, Any]]) -> str:
    """The update's ranges as the JSON text the server expects."""
    if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges):
        raise ServerError("event range updates must be a list of objects")
    return json.dumps(ranges)


def flatten_updates(ranges: list[Any], version: int) -> list[dict[str, Any]]:
    """Single range updates, in order: version 0 lists them; version 1 groups them per zip file
    (``{"zipFile": {...}, "eventRanges": [...]}``), where a bare range may appear as well."""
    flat: list[dict[str, Any]] = []
    for item in ranges:
        if version >= 1 and isinstance(item, dict) and isinstance(item.get("eventRanges"), list):
            flat.extend(r if isinstance(r, dict) else {"eventRangeID": r} for r in item["eventRanges"])
        else:
            flat.append(item if isinstance(item, dict) else {"eventRangeID": item})
    return flat


def update_reply(what: str, data: Any) -> dict[str, Any]:
    """``{"Returns": ..., "Commands": ...}`` decoded from what the server sent: an object whose values
    may be JSON text (legacy names the commands ``Command``), or the set panda-server 1.0.4 builds by
    mistake (``{"Returns", <returns>, "Commands", <commands>}``, readable only in its text reply)."""
    if isinstance(data, set | frozenset):
        values = [decode_value(v) for v in data if v not in ("Returns", "Commands")]
        returns = [v for v in values if isinstance(v, list)]
        commands = [v for v in values if isinstance(v, dict) or v is None]
        if len(returns) != 1 or len(commands) != 1:
            raise ServerError(f"{what}: cannot tell Returns from Commands in {data!r}"[:300], retryable=True)
        return {"Returns": returns[0], "Commands": commands[0]}
    if not isinstance(data, dict):
        raise ServerError(f"{what}: reply data is {type(data).__name__}, not an object", retryable=True)
    commands = data["Commands"] if "Commands" in data else data.get("Command")
    return {"Returns": decode_value(data.get("Returns")), "Commands": decode_value(commands)}


def statuses_from_reply(what: str, data: Any, job_id: int) -> dict[str, dict[str, Any]]:
    """One job's ``{range id: {"status", "error", "dialog"}}`` from ``{"<PandaID>": {...}}``."""
    data = decode_value(data)
    if not isinstance(data, dict):
        raise ServerError(f"{what}: reply data is {type(data).__name__}, not an object", retryable=True)
    ranges = data.get(str(job_id), data.get(job_id, {}))  # type: ignore[call-overload]
    if not isinstance(ranges, dict) or not all(isinstance(v, dict) for v in ranges.values()):
        raise ServerError(f"{what}: statuses are not an object of objects: {str(ranges)[:200]!r}", retryable=True)
    return {str(rid): value for rid, value in ranges.items()}
