"""Whether the source holds the status we reported for a range, read from what the source says it
holds (the PanDA server's ``get_event_range_statuses``, docs/protocol.md "Event ranges").

A report counts only once the source holds it: a range answered ``false``, or sent in a call whose
outcome is unknown (a time-out, the HTTP 500 of panda-server 1.0.4, which commits the update and
then fails to build its reply), is looked up; only what the source does not hold is sent again.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

# server statuses that settle a range we reported finished / failed
HOLDS_FINISHED = frozenset({"finished", "done", "merged"})
HOLDS_FAILED = frozenset({"failed", "fatal", "cancelled", "discarded", "ready", "done", "finished", "merged"})
HANDED_OUT = frozenset({"sent", "running"})  # not settled yet: the report is missing, sending it again may help


class Verdict(Enum):
    HELD = "held"  # the source holds the status
    MISSING = "missing"  # not applied (yet): send it again, within the budget
    REFUSED = "refused"  # the source settled the range otherwise, or does not know it: sending again cannot help


def verdict(reported: str, held: dict[str, Any] | None) -> Verdict:
    """``reported``: finished | failed; ``held``: the source's record of the range ({"status", ...}) or None."""
    status = str((held or {}).get("status") or "")
    if not status:
        return Verdict.REFUSED
    if status in (HOLDS_FINISHED if reported == "finished" else HOLDS_FAILED):
        return Verdict.HELD
    return Verdict.MISSING if status in HANDED_OUT else Verdict.REFUSED


def range_ids(payload: list[dict[str, Any]], version: int) -> list[str]:
    """The range ids of a report in the order the server answers them (``Returns``: one per range,
    the ranges of version-1 zipFile records flattened in order)."""
    if version >= 1:
        return [str(r.get("eventRangeID")) for record in payload for r in record.get("eventRanges", [])]
    return [str(record.get("eventRangeID")) for record in payload]


def answered(ids: list[str], returns: Any) -> dict[str, bool | None]:
    """Per range: True (taken), False (refused or skipped: look it up), None (no per-range answer)."""
    if not isinstance(returns, list):
        return dict.fromkeys(ids)
    if len(returns) != len(ids):  # an answer we cannot pair with the ranges: look every one up
        return dict.fromkeys(ids, False)
    return {rid: ret is True for rid, ret in zip(ids, returns, strict=True)}
