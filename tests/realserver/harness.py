"""The real PanDA server of a test session: its database, its configuration, its HTTP process,
and what the tests ask of it (submit, kill, one Adder pass, read its tables)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.realserver import cric
from tests.realserver.database import Cluster, free_port
from tests.realserver.server import Gunicorn, PandaHome, Tls

T = TypeVar("T")
JOB_TABLES = ("jobsdefined4", "jobsactive4", "jobswaiting4", "jobsarchived4")
# JEDI_Events.status codes (the server's EventServiceUtils)
EVENT_STATUS = {0: "ready", 1: "sent", 2: "running", 3: "finished", 4: "cancelled", 5: "discarded", 6: "done",
                7: "failed", 8: "fatal", 9: "merged", 10: "corrupted"}
# The schema ships one resource type that matches every job; the server's brokerage needs the usual ones.
RESOURCE_TYPES = (
    "DELETE FROM doma_panda.resource_types;"
    " INSERT INTO doma_panda.resource_types (resource_name, mincore, maxcore)"
    " VALUES ('SCORE', 1, 1), ('MCORE', 2, NULL);"
)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """``probe()`` until it returns something truthy; ``what`` names it in the timeout error."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


@dataclass
class RealServer:
    db: Cluster
    home: PandaHome
    http: Gunicorn
    dirty: bool = False  # jobs were submitted since the last reset

    @classmethod
    def build(cls, base: Path, venv: Path, schema: Path) -> RealServer:
        """A cluster with the schema and the suite's queue, kept as the template of ``reset``; the server up."""
        db = Cluster.create()
        db.start()
        try:
            db.load_schema(schema)
            db.psql(RESOURCE_TYPES)
            home = PandaHome(base / "panda", venv)
            home.write_config(db)
            cric.write_dumps(home.cric_dir)
            home.run("sv_configure.py")
            db.snapshot()
            server = cls(db, home, Gunicorn(home, home.http_port))
            server.http.start()
        except BaseException:
            db.stop()
            raise
        return server

    def close(self, keep_files: bool = False) -> None:
        try:
            self.http.stop()
        finally:
            self.db.stop()
            if not keep_files:
                self.db.remove()

    def reset(self) -> None:
        """The database as configured, before any job (the server restarts: it holds connections)."""
        self.http.stop()
        self.db.reset()
        self.http.start()
        self.dirty = False

    def tls_server(self, tls: Tls) -> Gunicorn:
        """A second server process on the same database that terminates TLS and demands a client certificate."""
        server = Gunicorn(self.home, free_port(), tls)
        server.start()
        return server

    # --- what an operator or JEDI does -----------------------------------------------------
    def submit(self, *specs: dict) -> list[int]:
        """Jobs through the server's own client; returns their PandaIDs once all are ``activated``."""
        self.dirty = True
        ids = json.loads(self.home.run("sv_submit.py", stdin=json.dumps(list(specs))).strip().splitlines()[-1])
        wait_for(f"jobs {ids} activated", lambda: all(self.job(i).get("jobstatus") == "activated" for i in ids), 30)
        return ids

    def kill(self, panda_id: int) -> None:
        self.home.run("sv_kill.py", str(panda_id))

    def adder_pass(self) -> None:
        self.home.run("sv_adder.py", timeout=300)

    # --- the server's tables ---------------------------------------------------------------
    def job(self, panda_id: int) -> dict[str, str]:
        """The job's row (with ``table``: where it is now); {} when the server has no such job."""
        for table in JOB_TABLES:
            rows = self.db.rows(f"SELECT * FROM doma_panda.{table} WHERE pandaid = {int(panda_id)}")
            if rows:
                return {**rows[0], "table": table}
        return {}

    def files(self, panda_id: int) -> list[dict[str, str]]:
        return self.db.rows(f"SELECT * FROM doma_panda.filestable4 WHERE pandaid = {int(panda_id)} ORDER BY row_id")

    def events(self, task_id: int) -> list[dict[str, str]]:
        """The task's event ranges, with the status as the server names it."""
        return self.db.rows(
            "SELECT e.*, s.name AS status_name FROM doma_panda.jedi_events e"
            " LEFT JOIN (VALUES " + ",".join(f"({code}, '{name}')" for code, name in EVENT_STATUS.items()) + ")"
            f" AS s(code, name) ON s.code = e.status WHERE e.jeditaskid = {int(task_id)} ORDER BY e.job_processid")

