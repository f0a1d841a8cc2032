"""Session fixtures of the real-server suite (see README.md here).

Without ``PANDA_DATABASE_DIR`` (a checkout of the public panda-database schema repository) every
test here is skipped at collection, before anything is installed or started.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realserver import install
from tests.realserver.harness import RealServer
from tests.realserver.pilot import PilotRun, Site

HERE = Path(__file__).resolve().parent
SKIP_REASON = "needs a panda-database schema checkout (PANDA_DATABASE_DIR)"


# per test, with the session's set-up in the first one (the server's venv, when not yet installed,
# takes minutes); every wait inside is bounded on its own
ITEM_TIMEOUT_S = 1200


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark = pytest.mark.timeout(ITEM_TIMEOUT_S) if os.environ.get("PANDA_DATABASE_DIR") \
        else pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(mark)


@dataclass
class Row:
    scenario: str
    db_state: str
    pilot_exit: int | str
    wall_s: float


ROWS: list[Row] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    lines = ["| scenario | DB state | pilot exit | wall time |", "|---|---|---|---|"]
    lines += [f"| {r.scenario} | {r.db_state} | {r.pilot_exit} | {r.wall_s:.1f} s |" for r in ROWS]
    terminalreporter.write_sep("=", "real PanDA server scenarios")
    for line in lines:
        terminalreporter.write_line(line)
    table = install.home() / "last-run.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")
    terminalreporter.write_line(f"(also in {table})")


@pytest.fixture(scope="session")
def last_run() -> Path:
    """Where this session's server home and sites go, kept until the next session for their logs
    (``$NODEPILOT_REALSERVER_HOME/last-run``: pytest's own temporary directories are pruned as
    other sessions start)."""
    base = install.home() / "last-run"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    return base


@pytest.fixture(scope="session")
def realserver(last_run: Path, request: pytest.FixtureRequest) -> Iterator[RealServer]:
    """PostgreSQL with the schema, the server configured with the suite's queue and up (plain HTTP)."""
    schema = Path(os.environ["PANDA_DATABASE_DIR"]).expanduser()
    if not (schema / "schema" / "postgres" / "sqls" / "init_step.sql").is_file():
        pytest.fail(f"PANDA_DATABASE_DIR={schema} is not a panda-database checkout (no schema/postgres/sqls)")
    install.ensure_system_packages()
    server = RealServer.build(last_run / "server", install.ensure_venv(), schema)
    yield server
    server.close(keep_files=request.session.testsfailed > 0)


@pytest.fixture
def server(realserver: RealServer) -> RealServer:
    """The server with no job: a test that submitted some leaves a reset behind it."""
    if realserver.dirty:
        realserver.reset()
    return realserver


@pytest.fixture
def site(last_run: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    site = Site.create(last_run / request.node.name / "site")
    yield site
    site.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[str, PilotRun], None]:
    """Note a scenario's outcome for the table printed at the end (before its assertions run)."""
    def _record(db_state: str, run: PilotRun) -> None:
        ROWS.append(Row(request.node.name.removeprefix("test_"), db_state, run.exit_code, run.wall_s))
    return _record
