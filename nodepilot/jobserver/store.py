"""The local job server's state: job definitions from a directory, and SQLite for what happened
(jobs handed out, every update, event ranges and their status)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodepilot.panda.events import EVENT_STATUSES
from nodepilot.values import whole_number

log = logging.getLogger(__name__)

FINAL_STATES = ("finished", "failed")
EVENT_RANGES_KEY = "_event_ranges"  # a definition's ranges; stripped before the job is served
MAX_RANGE_ATTEMPTS = 3
RANGE_ACTIVE = ("running", "transferring")  # handed out, not reported as done


class JobCatalog:
    """The job definitions of a directory, read anew on each request (files may be added)."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self._warned: set[tuple[str, int]] = set()

    def scan(self) -> Iterator[tuple[str, Any]]:
        """(source, definition) in file-name order; source is ``<file>#<index>``."""
        if not self.jobs_dir.is_dir():
            self._warn_once(str(self.jobs_dir), 0, "no such directory")
            return
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                mtime = path.stat().st_mtime_ns if path.exists() else 0
                self._warn_once(path.name, mtime, f"skipped, not readable JSON: {exc}")
                continue
            items = content if isinstance(content, list) else [content]
            for index, definition in enumerate(items):
                yield f"{path.name}#{index}", definition

    def _warn_once(self, name: str, mtime: int, what: str) -> None:
        if (name, mtime) not in self._warned:
            self._warned.add((name, mtime))
            log.warning("job definitions %s: %s", name, what)


def number(definition: Any, key: str) -> int | None:
    return whole_number(definition.get(key)) if isinstance(definition, dict) else None


def served_definition(definition: Any) -> Any:
    """The definition as the pilot gets it: without the server's own ``_event_ranges``."""
    if isinstance(definition, dict):
        return {k: v for k, v in definition.items() if k != EVENT_RANGES_KEY}
    return definition


def _ranges_of(source: str, definition: Any) -> list[dict[str, Any]]:
    ranges = definition.get(EVENT_RANGES_KEY) if isinstance(definition, dict) else None
    if ranges is None:
        return []
    if not isinstance(ranges, list):
        log.warning("%s: %s is not a list; ignored", source, EVENT_RANGES_KEY)
        return []
    usable = [r for r in ranges if isinstance(r, dict) and isinstance(r.get("eventRangeID"), str)]
    if len(usable) != len(ranges):
        log.warning("%s: %d entries of %s without an eventRangeID string skipped",
                    source, len(ranges) - len(usable), EVENT_RANGES_KEY)
    return usable


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT UNIQUE NOT NULL,      -- <file name>#<index in the file>
    panda_id INTEGER,                 -- NULL: the definition has no usable PandaID
    attempt_nr INTEGER NOT NULL,
    status TEXT NOT NULL,
    definition TEXT NOT NULL,         -- as served (without _event_ranges)
    acquire_params TEXT NOT NULL,
    dispatched_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    start_time TEXT,
    end_time TEXT
);
CREATE INDEX IF NOT EXISTS jobs_panda_id ON jobs (panda_id);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    panda_id INTEGER NOT NULL,
    time REAL NOT NULL,
    params TEXT NOT NULL,             -- the parameters of the call as received, JSON
    command TEXT,
    applied INTEGER NOT NULL          -- 0: recorded only (unknown job, wrong attempt, already final)
);
CREATE INDEX IF NOT EXISTS updates_panda_id ON updates (panda_id);
CREATE TABLE IF NOT EXISTS worker_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,             -- update_worker_status, update_worker_node, update_worker_node_gpu
    time REAL NOT NULL,
    params TEXT NOT NULL              -- as received, JSON
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    panda_id INTEGER NOT NULL,
    command TEXT NOT NULL,            -- tobekilled, softkill, debug, debugoff
    queued_at REAL NOT NULL,
    delivered_at REAL                 -- NULL: waits for the job's next update
);
CREATE TABLE IF NOT EXISTS event_ranges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    panda_id INTEGER NOT NULL,
    range_id TEXT NOT NULL,           -- eventRangeID
    definition TEXT NOT NULL,         -- the range as in the job definition, JSON
    status TEXT NOT NULL,             -- ready, running, transferring, finished, failed, fatal
    attempts INTEGER NOT NULL,        -- times handed out
    error_code INTEGER,
    modified_at REAL NOT NULL,
    UNIQUE (panda_id, range_id)
);
CREATE INDEX IF NOT EXISTS event_ranges_range_id ON event_ranges (range_id);
CREATE TABLE IF NOT EXISTS range_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    range_row INTEGER NOT NULL,       -- event_ranges.id: one range over all its attempts
    range_id TEXT NOT NULL,           -- the eventRangeID as reported (an attempt's)
    status TEXT NOT NULL,
    error_code INTEGER,
    zip_file TEXT,                    -- version 1: the zipFile record the range came in, JSON
    applied INTEGER NOT NULL,         -- 1: it settled the range; 0: a repeat or refused
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS range_updates_range_row ON range_updates (range_row);
"""


class JobStore:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # --- jobs -------------------------------------------------------------------------------
    def dispatched_sources(self) -> set[str]:
        with self.lock:
            return {row["source"] for row in self.db.execute("SELECT source FROM jobs")}

    def record_dispatch(self, source: str, definition: Any, acquire_params: dict[str, Any]) -> None:
        now = time.time()
        panda_id = number(definition, "PandaID")
        ranges = _ranges_of(source, definition)
        with self._transaction():
            self.db.execute(
                "INSERT INTO jobs (source, panda_id, attempt_nr, status, definition, acquire_params,"
                " dispatched_at, modified_at) VALUES (?, ?, ?, 'sent', ?, ?, ?, ?)",
                (source, panda_id, number(definition, "attemptNr") or 0,
                 json.dumps(served_definition(definition)), json.dumps(acquire_params), now, now))
            if panda_id is None:
                if ranges:
                    log.warning("%s: event ranges of a job without a usable PandaID are ignored", source)
                return
            self.db.executemany(
                "INSERT OR IGNORE INTO event_ranges (panda_id, range_id, definition, status, attempts, modified_at)"
                " VALUES (?, ?, ?, 'ready', 0, ?)",
                [(panda_id, r["eventRangeID"], json.dumps(r), now) for r in ranges])

    def _latest_job(self, panda_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE panda_id = ? ORDER BY id DESC LIMIT 1",
                               (panda_id,)).fetchone()

    def record_update(self, job_id: int, status: str, attempt_nr: int | None, params: dict[str, Any],
                      times: dict[str, str]) -> str | None:
        """Apply one accepted update_job call and keep it; return the command for the pilot."""
        now = time.time()
        with self._transaction():
            job = self._latest_job(job_id)
            command: str | None = None
            applied = False
            if job is None or (attempt_nr is not None and attempt_nr != job["attempt_nr"]):
                command = "tobekilled"  # not ours to run (any more)
            elif job["status"] not in FINAL_STATES:
                applied = True
                self.db.execute(
                    "UPDATE jobs SET status = ?, modified_at = ?, start_time = COALESCE(?, start_time),"
                    " end_time = COALESCE(?, end_time) WHERE id = ?",
                    (status, now, times.get("start_time"), times.get("end_time"), job["id"]))
                queued = self.db.execute("SELECT id, command FROM commands WHERE panda_id = ? AND delivered_at IS NULL"
                                         " ORDER BY id LIMIT 1", (job_id,)).fetchone()
                if queued is not None and status not in FINAL_STATES:
                    command = queued["command"]
                    self.db.execute("UPDATE commands SET delivered_at = ? WHERE id = ?", (now, queued["id"]))
            self.db.execute(
                "INSERT INTO updates (panda_id, time, params, command, applied) VALUES (?, ?, ?, ?, ?)",
                (job_id, now, json.dumps(params), command, int(applied)))
        return command

    def record_worker_report(self, method: str, params: dict[str, Any]) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO worker_reports (method, time, params) VALUES (?, ?, ?)",
                            (method, time.time(), json.dumps(params)))

    def worker_reports(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT method, time, params FROM worker_reports ORDER BY id").fetchall()
        return [{"method": r["method"], "time": r["time"], **json.loads(r["params"])} for r in rows]

    def queue_command(self, panda_id: int, command: str) -> bool:
        """An operator's command for a job, answered to the job's next update; False: no such job."""
        with self._transaction():
            if self._latest_job(panda_id) is None:
                return False
            self.db.execute("INSERT INTO commands (panda_id, command, queued_at) VALUES (?, ?, ?)",
                            (panda_id, command, time.time()))
        return True

    def jobs(self, panda_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            if panda_id is None:
                rows = self.db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                row = self._latest_job(panda_id)
                rows = [row] if row is not None else []
            return [self._job(row) for row in rows]

    def _job(self, row: sqlite3.Row) -> dict[str, Any]:
        updates = self.db.execute("SELECT * FROM updates WHERE panda_id = ? ORDER BY id",
                                  (row["panda_id"],)).fetchall() if row["panda_id"] is not None else []
        return {
            "PandaID": row["panda_id"], "status": row["status"], "attemptNr": row["attempt_nr"],
            "source": row["source"], "dispatchedAt": row["dispatched_at"], "modifiedAt": row["modified_at"],
            "startTime": row["start_time"], "endTime": row["end_time"],
            # the parameters as received (never named so: they passed the signature check) and the answer
            "updates": [{**json.loads(u["params"]), "time": u["time"], "command": u["command"],
                         "applied": bool(u["applied"])} for u in updates],
        }

    # --- event ranges ---------------------------------------------------------------------------
    def acquire_ranges(self, panda_id: int, jobset_id: int | None, n_ranges: int) -> list[dict[str, Any]]:
        """Hand out up to ``n_ranges`` ranges of a running job: ready ones, and failed ones again
        while they have had fewer than MAX_RANGE_ATTEMPTS attempts. [] when none are left."""
        now = time.time()
        with self._transaction():
            job = self._latest_job(panda_id)
            if job is None or job["status"] in FINAL_STATES or n_ranges < 1:
                return []
            expected = number(json.loads(job["definition"]), "jobsetID")
            if expected is not None and jobset_id is not None and expected != jobset_id:
                log.warning("event ranges of job %s asked for with jobsetID %s, not %s", panda_id, jobset_id, expected)
                return []
            rows = self.db.execute(
                "SELECT id, definition, status, attempts FROM event_ranges WHERE panda_id = ?"
                " AND (status = 'ready' OR (status = 'failed' AND attempts < ?)) ORDER BY id LIMIT ?",
                (panda_id, MAX_RANGE_ATTEMPTS, n_ranges)).fetchall()
            handed_out = []
            for row in rows:
                definition = json.loads(row["definition"])
                if row["status"] == "failed":  # redispatched: a new attempt is a new range id, as PanDA does
                    definition["eventRangeID"] = next_attempt_id(str(definition["eventRangeID"]), row["attempts"] + 1)
                self.db.execute(
                    "UPDATE event_ranges SET status = 'running', attempts = attempts + 1, error_code = NULL,"
                    " range_id = ?, definition = ?, modified_at = ? WHERE id = ?",
                    (str(definition["eventRangeID"]), json.dumps(definition), now, row["id"]))
                handed_out.append(definition)
        return handed_out

    def update_ranges(self, updates: list[dict[str, Any]], zip_files: dict[str, Any] | None = None
                      ) -> tuple[list[bool], dict[int, str | None]]:
        """Apply single range updates in order: True for each one taken, and a command (none) per job.
        A range handed out may go to any status; a final one only repeats its status (a retried call).
        Every update of a known range is kept (``range_updates``), with its zipFile record if any."""
        now = time.time()
        returns: list[bool] = []
        commands: dict[int, str | None] = {}
        zip_files = zip_files or {}
        with self._transaction():
            for update in updates:
                status = update.get("eventStatus")
                range_id = str(update.get("eventRangeID"))
                row = self.db.execute("SELECT * FROM event_ranges WHERE range_id = ? ORDER BY id DESC LIMIT 1",
                                      (range_id,)).fetchone()
                if row is None or status not in EVENT_STATUSES:
                    returns.append(False)
                    continue
                commands[row["panda_id"]] = None
                applied = row["status"] in RANGE_ACTIVE
                if applied:
                    self.db.execute("UPDATE event_ranges SET status = ?, error_code = ?, modified_at = ? WHERE id = ?",
                                    (status, number(update, "errorCode"), now, row["id"]))
                returns.append(applied or row["status"] == status)
                zip_file = zip_files.get(range_id)
                self.db.execute(
                    "INSERT INTO range_updates (range_row, range_id, status, error_code, zip_file, applied, time)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["id"], range_id, status, number(update, "errorCode"),
                     json.dumps(zip_file) if zip_file is not None else None, int(applied), now))
        return returns, commands

    def ranges(self, panda_id: int) -> list[dict[str, Any]] | None:
        """The ranges of a job as the server keeps them, each with every update received for it (over
        all its attempts, in order); None for a job never handed out."""
        with self.lock:
            if self._latest_job(panda_id) is None:
                return None
            rows = self.db.execute("SELECT * FROM event_ranges WHERE panda_id = ? ORDER BY id", (panda_id,)).fetchall()
            received: dict[int, list[dict[str, Any]]] = {}
            for u in self.db.execute(
                    "SELECT u.* FROM range_updates u JOIN event_ranges r ON u.range_row = r.id"
                    " WHERE r.panda_id = ? ORDER BY u.id", (panda_id,)):
                received.setdefault(u["range_row"], []).append({
                    "eventRangeID": u["range_id"], "eventStatus": u["status"], "errorCode": u["error_code"],
                    "zipFile": json.loads(u["zip_file"]) if u["zip_file"] else None, "applied": bool(u["applied"]),
                    "time": u["time"]})
            return [{**json.loads(row["definition"]), "status": row["status"], "attempts": row["attempts"],
                     "errorCode": row["error_code"], "modifiedAt": row["modified_at"],
                     "updates": received.get(row["id"], [])} for row in rows]


class _Transaction:
    """The store's lock held and one SQLite transaction: committed, or rolled back on any error."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store.lock.acquire()
        try:
            self.store.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store.lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self.store.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.store.lock.release()


def next_attempt_id(range_id: str, attempt: int) -> str:
    """``<task>-<panda>-<file>-<proc>-<attempt>`` with the attempt replaced (appended if absent)."""
    head, sep, tail = range_id.rpartition("-")
    return f"{head}-{attempt}" if sep and tail.isdigit() else f"{range_id}-{attempt}"
