"""The files of Harvester's shared-file messenger in a worker's access point (docs/hpc.md): their names,
how each is written whole, how the job spec is read, how a report file is merged with what is pending.

Harvester renames a report it picks up (``<name>`` -> ``<name>.read``), so a file still at its name has
not been read yet: a new report is merged into it. The merge first renames the pending file to a name of
its own (an atomic steal: either Harvester has it, or we do, never both), so no entry is read twice or lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class HarvesterFiles:
    """The names Harvester's defaults use (the pilot's side must match the worker's queue configuration)."""

    access_point: Path
    job_specs: tuple[str, ...] = ("HPCJobs.json", "pandaJobData.out")
    pandaids: str = "worker_pandaids.json"
    worker_attributes: str = "worker_attributes.json"
    job_report: str = "jobReport.json"
    event_status: str = "event_status.dump.json"
    job_request: str = "worker_requestjob.json"
    event_request: str = "worker_requestevents.json"
    event_ranges: str = "JobsEventRanges.json"
    update_events: str = "worker_updateevents.json"
    kill_worker: str = "kill_worker.json"
    heartbeat: str = "worker_heartbeat.json"
    consumed_suffix: str = ".taken"  # a job spec read by the pilot: kept beside it, never read twice

    def path(self, name: str) -> Path:
        return self.access_point / name


class JobSpecError(ValueError):
    """The job spec file cannot be read as a job; ``panda_id`` when the file names one."""

    def __init__(self, diag: str, panda_id: int | None = None) -> None:
        super().__init__(diag)
        self.panda_id = panda_id


def write_whole(path: Path, data: Any) -> None:
    """JSON written to a temporary name in the same directory, then renamed: a reader sees all or nothing."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w") as fh:
            json.dump(data, fh, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def touch(path: Path) -> None:
    path.touch()
    os.utime(path)  # an existing file too: its mtime is what Harvester's heartbeat check reads


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Between the pilot's own processes (the monitor and the event client both add to the same reports)."""
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merge_into(path: Path, add: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """``path`` rewritten whole as ``add(<what is pending there unread>)``."""
    with _locked(path.with_name(f".{path.name}.lock")):
        _merge(path, add)


def _merge(path: Path, add: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    stolen = path.with_name(f".{path.name}.merging")
    pending: dict[str, Any] = {}
    try:
        os.rename(path, stolen)
    except FileNotFoundError:
        pass
    else:
        with contextlib.suppress(OSError, ValueError):
            read = json.loads(stolen.read_text())
            pending = read if isinstance(read, dict) else {}
    write_whole(path, add(pending))
    stolen.unlink(missing_ok=True)


def _entry_key(panda_id: int, entry: dict[str, Any]) -> str:
    what = entry.get("eventRangeID") or entry.get("path")
    return f"{panda_id}|{entry.get('type', '')}|{what}"


def append_entries(path: Path, panda_id: int, entries: list[dict[str, Any]]) -> int:
    """``{"<PandaID>": [entry, ...]}`` files (the event status dump, the event updates): the entries added
    that were never added before (a report repeated after a crash is not declared twice; the keys declared
    are kept beside the file). Returns how many were added."""
    with _locked(path.with_name(f".{path.name}.lock")):
        ledger = path.with_name(f".{path.name}.declared")
        known = read_json(ledger)
        seen = set(known) if isinstance(known, list) else set()
        fresh = [e for e in entries if _entry_key(panda_id, e) not in seen]
        if not fresh:
            return 0

        def add(pending: dict[str, Any]) -> dict[str, Any]:
            listed = pending.get(str(panda_id))
            pending[str(panda_id)] = [*(listed if isinstance(listed, list) else []), *fresh]
            return pending

        _merge(path, add)
        write_whole(ledger, sorted(seen | {_entry_key(panda_id, e) for e in fresh}))
        return len(fresh)


def _int_id(key: Any) -> int | None:
    try:
        return int(str(key).strip())
    except ValueError:
        return None


def parse_job_spec(text: str) -> tuple[int | None, dict[str, Any]]:
    """The first job of a spec file: JSON ``{"<PandaID>": {job}}`` (a ``{`` first), else the cgi form."""
    body = text.strip()
    if not body:
        raise JobSpecError("the job spec file is empty")
    if body.startswith("{"):
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise JobSpecError(f"the job spec file is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not doc:
            raise JobSpecError("the job spec file holds no job (expected {\"<PandaID>\": {...}})")
        key, job = next(iter(doc.items()))
        panda_id = _int_id(key)
        if panda_id is None and "PandaID" in doc:  # a bare job dict, not keyed by its id
            return _int_id(doc["PandaID"]), doc
        if not isinstance(job, dict):
            raise JobSpecError(f"the job spec of {key!r} is not a JSON object", panda_id)
        if panda_id is None:
            raise JobSpecError(f"the job spec file's key {key!r} is not a PandaID")
        return panda_id, {"PandaID": panda_id, **job}
    fields = dict(parse_qsl(body, keep_blank_values=True))
    if "PandaID" not in fields:
        raise JobSpecError("the job spec file is neither JSON nor a cgi job (no PandaID)")
    return _int_id(fields["PandaID"]), fields


def read_json(path: Path) -> Any:
    """A whole JSON file, or None when it is absent."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
