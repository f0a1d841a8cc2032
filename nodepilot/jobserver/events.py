"""The local job server's event-range handlers (``/api/v1/event/...``), with the real server's
signatures and its behaviour on every point the pilot relies on (docs/protocol.md "Event ranges"):

- a version-1 zipFile record without ``objstoreID`` is refused (``false`` for each of its ranges):
  the real server reads it unconditionally;
- ``Returns`` has one entry per range, the ranges of version-1 records flattened in order;
- ``get_event_range_statuses`` (GET) reads ``job_task_ids`` as ``[{"task_id", "panda_id"}]`` (a
  ``job_id`` key fails there with a database error) and answers ``{"<PandaID>": {id: {status,
  error, dialog}}}``;
- with ``commit_then_500`` (panda-server 1.0.4's bug) an update is applied, then answered HTTP 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nodepilot.jobserver.api import Dispatcher, Handlers, response
from nodepilot.jobserver.store import JobStore
from nodepilot.panda.events import flatten_updates

log = logging.getLogger(__name__)

MESSAGE_JSON = "failed to load JSON"
MESSAGE_DATABASE = "database error in the PanDA server"
REPLY_BUG = "Object of type set is not JSON serializable"  # what 1.0.4 fails with after its commit
# our ledger's range states as the real server names them (a range handed out is "sent" there until reported)
SERVER_STATUS = {"running": "sent", "transferring": "running"}


class ReplyFailedAfterCommit(RuntimeError):
    """panda-server 1.0.4: the update is committed, then building the reply fails (HTTP 500)."""


# --- the signatures of pandaserver/api/v1/event_api.py -------------------------------------------
class EventApi(Handlers):
    def __init__(self, dispatcher: Dispatcher, commit_then_500: bool = False) -> None:
        super().__init__(dispatcher)
        self.commit_then_500 = commit_then_500
        self.methods = {"acquire_event_ranges": self.acquire_event_ranges,
                        "update_event_ranges": self.update_event_ranges,
                        "get_event_range_statuses": self.get_event_range_statuses}
        self.get_methods = frozenset({"get_event_range_statuses"})

    def acquire_event_ranges(
        self,
        job_id: int,
        jobset_id: int,
        task_id: int | None = None,
        n_ranges: int = 10,
        timeout: int = 60,
        scattered: bool | None = None,
        segment_id: int | None = None,
    ) -> dict[str, Any]:
        ranges = self.store.acquire_ranges(job_id, jobset_id, n_ranges)
        log.info("acquire_event_ranges of job %s: %d", job_id, len(ranges))
        return response(True, data=ranges)

    def update_event_ranges(self, event_ranges: str, timeout: int = 120, version: int = 0) -> dict[str, Any]:
        returns, commands = event_update(self.store, event_ranges, version)
        if returns is None:
            return response(False, MESSAGE_JSON)
        if self.commit_then_500:
            raise ReplyFailedAfterCommit(REPLY_BUG)
        if version == 0:  # the real server JSON-encodes both for version 0 and sends them as they are else
            return response(True, data={"Returns": json.dumps(returns), "Commands": json.dumps(commands)})
        return response(True, data={"Returns": returns, "Commands": commands})

    def get_event_range_statuses(self, job_task_ids: str) -> dict[str, Any]:
        try:
            pairs = json.loads(job_task_ids)
            panda_ids = [int(pair["panda_id"]) for pair in pairs]
        except (TypeError, ValueError, KeyError) as exc:  # the real server: its SQL fails, "database error"
            log.warning("get_event_range_statuses(%r): %r", job_task_ids, exc)
            return response(False, MESSAGE_DATABASE)
        return response(True, data={str(panda_id): range_statuses(self.store, panda_id) for panda_id in panda_ids})


def range_statuses(store: JobStore, panda_id: int) -> dict[str, dict[str, Any]]:
    return {str(r["eventRangeID"]): {"status": SERVER_STATUS.get(r["status"], r["status"]), "error": r["errorCode"],
                                     "dialog": None}
            for r in store.ranges(panda_id) or []}


def event_update(store: JobStore, text: str, version: int) -> tuple[list[bool] | None, dict[int, str | None]]:
    """Apply an update_event_ranges call's JSON text: (Returns, Commands), or (None, {}) when the
    text is not a JSON list. The ranges of a zipFile record without objstoreID are refused."""
    try:
        ranges = json.loads(text)
    except (TypeError, ValueError):
        return None, {}
    if not isinstance(ranges, list):
        return None, {}
    updates = flatten_updates(ranges, version)
    refused = _without_objstore(ranges, version)
    taken, commands = store.update_ranges([u for u in updates if str(u.get("eventRangeID")) not in refused],
                                          zip_files(ranges, version))
    if refused:
        log.warning("update_event_ranges: zipFile without objstoreID: %d ranges refused", len(refused))
    answers = iter(taken)
    return [False if str(u.get("eventRangeID")) in refused else next(answers) for u in updates], commands


def _without_objstore(ranges: list[Any], version: int) -> set[str]:
    return {str(r.get("eventRangeID") if isinstance(r, dict) else r)
            for item in ranges if version >= 1 and isinstance(item, dict) and isinstance(item.get("eventRanges"), list)
            and isinstance(item.get("zipFile"), dict) and item["zipFile"].get("objstoreID") in (None, "")
            for r in item["eventRanges"]}


def zip_files(ranges: list[Any], version: int) -> dict[str, Any]:
    """Version 1: the zipFile record each range came with, by range id (kept in the ledger)."""
    if version < 1:
        return {}
    return {str(r.get("eventRangeID") if isinstance(r, dict) else r): item["zipFile"]
            for item in ranges if isinstance(item, dict) and isinstance(item.get("eventRanges"), list)
            for r in item["eventRanges"] if "zipFile" in item}
