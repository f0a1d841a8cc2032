"""A throwaway PostgreSQL 15 cluster holding the PanDA schema of a panda-database checkout.

The cluster lives in a temporary directory (kept when a test failed, for its log), listens on
127.0.0.1 only (a free port) and on a Unix socket in its own directory, and is stopped at the end
of the session. The schema is loaded once, in the order the schema repository's own init script
uses, then copied to a template database: ``reset()`` drops ``panda_db`` and recreates it from
that template (a clean server in a few seconds).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("NODEPILOT_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB = "panda_db"
TEMPLATE = "panda_db_clean"
USER = "panda"
PASSWORD = "nodepilot-realserver"  # loopback only, a throwaway cluster
COMPONENTS = ("PANDA", "PANDAMETA", "PANDAARCH", "PANDABIGMON", "DEFT", "PARTITION")
PARTS = ("TABLE", "VIEW", "TYPE", "SEQUENCE", "FUNCTION", "TRIGGER", "SCHEDULER_JOBS", "PROCEDURE")
# The base PANDA tables of panda-database 0.1.6 lack this table, which a scheduled job and the
# server's worker-node inventory use.
WORKER_NODE_QUEUE = """
CREATE TABLE IF NOT EXISTS doma_panda.worker_node_queue (
    site varchar(128) NOT NULL, host_name varchar(128) NOT NULL, panda_queue varchar(128) NOT NULL,
    last_seen timestamp, PRIMARY KEY (site, host_name, panda_queue));
ALTER TABLE doma_panda.worker_node_queue OWNER TO panda;
"""
START_TIMEOUT_S = 60
SQL_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class SqlError(RuntimeError):
    pass


@dataclass
class Cluster:
    base: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def _run(self, *args: str, timeout: float = SQL_TIMEOUT_S, stdin: str | None = None) -> str:
        done = subprocess.run([*_as_postgres(), *args], input=stdin, capture_output=True, text=True,
                              timeout=timeout, cwd="/")
        if done.returncode != 0:
            raise SqlError(f"{' '.join(args[:3])}...: exit {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    @classmethod
    def create(cls) -> Cluster:
        """A new cluster in a temporary directory of its own (the ``postgres`` user must reach it:
        a pytest temporary directory is private to root)."""
        base = Path(tempfile.mkdtemp(prefix="nodepilot-realserver-pg-"))
        cluster = cls(base, free_port())
        cluster.socket_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(cluster.socket_dir, "postgres")
        cluster._run(str(PG_BIN / "initdb"), "-D", str(cluster.data_dir), "-U", "postgres", "--auth-local=trust",
                     "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", timeout=120)
        with (cluster.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                       f"unix_socket_directories = '{cluster.socket_dir}'\n"
                       "shared_preload_libraries = 'pg_cron,pg_partman_bgw'\n"
                       "cron.database_name = 'postgres'\nmax_connections = 200\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        return cluster

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "postgres.log"),
                  "-w", "-t", str(START_TIMEOUT_S), "start", timeout=START_TIMEOUT_S + 10)

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop",
                  timeout=40)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, *, db: str = DB, strict: bool = True) -> str:
        """Run SQL as the superuser (on stdin: the postgres user need not read our files); rows come
        back unaligned, ``|``-separated. Not ``strict``: a failing statement does not stop the rest."""
        args = [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", "postgres", "-d", db]
        if strict:
            args += ["-v", "ON_ERROR_STOP=1"]
        return self._run(*args, stdin=sql)

    def rows(self, sql: str) -> list[dict[str, str]]:
        """The rows of one query as dicts (column names lower case, values as text, NULL as '')."""
        out = self.psql(f"COPY ({sql.rstrip().rstrip(';')}) TO STDOUT WITH (FORMAT csv, HEADER)")
        return [{k.lower(): v for k, v in row.items()} for row in csv.DictReader(io.StringIO(out))]

    def load_schema(self, checkout: Path) -> None:
        """The schema of a panda-database checkout, as its init script loads it (with two repairs)."""
        sqls = checkout / "schema" / "postgres" / "sqls"
        version = (checkout / "schema" / "postgres" / "version").read_text().strip()
        self.psql((sqls / "init_step.sql").read_text().replace("${PANDA_DB_PASSWORD}", PASSWORD), db="postgres")
        for comp in COMPONENTS:
            for name in [f"pg_{comp}.sql"] + [f"pg_{comp}_{part}.sql" for part in PARTS]:
                source = sqls / name
                if not source.is_file():
                    continue
                text = source.read_text()
                if comp == "PARTITION" and self._partman_major() < 5:
                    text = text.replace("p_type => 'range'", "p_type => 'native'")
                self.psql(text, strict=False)  # as the init script: a failing statement does not stop the file
                if name == "pg_PANDA_TABLE.sql":
                    self.psql(WORKER_NODE_QUEUE)
        major, minor, patch = version.split(".")
        self.psql("INSERT INTO doma_panda.pandadb_version (component, major, minor, patch) "
                  f"VALUES ('PanDA', '{major}', '{minor}', '{patch}')")
        self.psql((sqls / "post_step_panda.sql").read_text(), strict=False)
        self.psql((sqls / "post_step_cron.sql").read_text(), db="postgres", strict=False)

    def _partman_major(self) -> int:
        out = self.psql("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").strip()
        return int(out.split(".")[0]) if out else 0

    def snapshot(self) -> None:
        """Keep the current ``panda_db`` as the template ``reset()`` restores."""
        self.psql(f"DROP DATABASE IF EXISTS {TEMPLATE}", db="postgres")
        self._with_retry(f"CREATE DATABASE {TEMPLATE} TEMPLATE {DB}")

    def reset(self) -> None:
        """``panda_db`` as it was at the last ``snapshot()`` (every connection to it is closed)."""
        self.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")
        self._with_retry(f"CREATE DATABASE {DB} TEMPLATE {TEMPLATE}")

    def _with_retry(self, sql: str, timeout: float = 30) -> None:
        """CREATE DATABASE ... TEMPLATE fails while anyone (a scheduled job) is connected to the source."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.psql(sql, db="postgres")
                return
            except SqlError as e:
                if "being accessed by other users" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
