"""The whole pilot as a user runs it: ``nodepilot serve`` and ``nodepilot start`` as processes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# the harness is shared with the benchmarks (bench/harness.py), which import nothing from tests/
from bench.harness import (  # noqa: F401 (re-exported for the tests)
    EXAMPLES,
    NODEPILOT,
    JobServer,
    add_jobs,
    final_update,
    kill_if_running,
    start_job_server,
    write_queuedata,
)


@pytest.fixture(autouse=True)
def payloads_see_the_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Payloads run in a sandbox (services/runner/isolation.py): those of examples/ (es_payload.py...)
    need their directory mounted, read-only, as a site mounts its software area."""
    monkeypatch.setenv("NODEPILOT_ISOLATION_BINDS", str(EXAMPLES))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site: a local SE with the demo inputs, a work dir and a jobs dir."""
    shutil.copytree(EXAMPLES / "se", tmp_path / "se")
    (tmp_path / "work").mkdir()
    (tmp_path / "jobs").mkdir()
    return tmp_path


@pytest.fixture
def job_server(site: Path) -> Iterator[JobServer]:
    server = start_job_server(site / "jobs", site)
    yield server
    server.process.terminate()
    server.process.wait(10)


def run_pilot(site: Path, server_url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", server_url, "--workdir", str(site / "work"),
         "--se-dir", str(site / "se"), *extra],
        capture_output=True, text=True, timeout=timeout,
    )


