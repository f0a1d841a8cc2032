"""The whole pilot as a user runs it: ``nodepilot serve`` and ``nodepilot start`` as processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODEPILOT = [sys.executable, "-m", "nodepilot"]


@dataclass
class JobServer:
    url: str
    jobs_dir: Path
    process: subprocess.Popen

    def jobs(self) -> dict[int, dict]:
        reply = httpx.get(f"{self.url}/jobs", timeout=10)
        reply.raise_for_status()
        return {int(j["PandaID"]): j for j in reply.json()}


def start_job_server(jobs_dir: Path, base: Path, *options: str) -> JobServer:
    port_file = base / "server.port"
    proc = subprocess.Popen([*NODEPILOT, "serve", "--jobs", str(jobs_dir), "--db", str(base / "server.sqlite"),
                             "--port-file", str(port_file), *options])
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("job server did not start")
        time.sleep(0.02)
    scheme = "https" if "--tls" in options else "http"
    return JobServer(f"{scheme}://127.0.0.1:{port_file.read_text().strip()}", jobs_dir, proc)


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


def add_jobs(site: Path, *jobs: dict | Path) -> None:
    for i, job in enumerate(jobs):
        if isinstance(job, Path):
            shutil.copy(job, site / "jobs" / job.name)
        else:
            (site / "jobs" / f"{i:02d}_{job['PandaID']}.json").write_text(json.dumps(job))


def write_queuedata(site: Path, **fields: object) -> str:
    """``<site>/queuedata.json``: the site's SE for every activity, plus ``fields``; returns its path."""
    eps = [{"name": "LOCAL_SE", "url": (site / "se").resolve().as_uri(), "id": 1}]
    data = {"name": "LOCAL_TEST", "site": "LOCAL_TEST",
            "endpoints": {a: eps for a in ("read_lan", "write_lan", "pl", "es_events")}, **fields}
    path = site / "queuedata.json"
    path.write_text(json.dumps(data))
    return str(path)


def kill_if_running(proc: subprocess.Popen) -> None:
    """For a test's ``finally``: a pilot that did not end by itself is not left behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def run_pilot(site: Path, server_url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", server_url, "--workdir", str(site / "work"),
         "--se-dir", str(site / "se"), *extra],
        capture_output=True, text=True, timeout=timeout,
    )


def final_update(job: dict) -> dict:
    """The last final update, with the new API's names (legacy updates are stored as sent)."""
    finals = [u for u in job["updates"] if (u.get("job_status") or u.get("state")) in ("finished", "failed")]
    assert finals, f"no final update for {job['PandaID']}: {job['updates']}"
    update = dict(finals[-1])
    for legacy, new in (("state", "job_status"), ("pilotErrorCode", "pilot_error_code"),
                        ("pilotErrorDiag", "pilot_error_diag"), ("xml", "job_output_report")):
        if legacy in update and new not in update:
            update[new] = update[legacy]
    return update
