"""The pilot under test: this repository's ``nodepilot start``, as a process, on a site of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.stager.paths import deterministic_path
from tests.realserver import cric, jobs

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PILOT_TIMEOUT_S = 240


@dataclass
class Site:
    """A worker node's view: the disk endpoint (a directory holding the example inputs), the
    event-service store, a work directory and the queue data naming both endpoints."""

    root: Path
    run_dir: Path  # the pilot's sockets: a short path (a Unix socket's path has at most 107 bytes)

    @classmethod
    def create(cls, root: Path) -> Site:
        site = cls(root, Path(tempfile.mkdtemp(prefix="nodepilot-rs-")))
        shutil.copytree(EXAMPLES / "se", site.se)
        es_input = site.se / deterministic_path(jobs.SCOPE, jobs.ES_INPUT)
        es_input.parent.mkdir(parents=True, exist_ok=True)
        es_input.write_bytes(jobs.ES_INPUT_BYTES)
        site.es_store.mkdir()
        site.work.mkdir()
        site.queuedata.write_text(json.dumps(cric.queuedata(site.se, site.es_store)))
        return site

    @property
    def se(self) -> Path:
        return self.root / "se"

    @property
    def es_store(self) -> Path:
        return self.root / "es"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def queuedata(self) -> Path:
        return self.root / "queuedata.json"

    def stored(self, scope: str, lfn: str, endpoint: Path | None = None) -> Path:
        return (endpoint or self.se) / deterministic_path(scope, lfn)

    def close(self) -> None:
        """The pilot's summary.json kept with the site, its run directory removed."""
        summary = self.run_dir / "summary.json"
        if summary.exists():
            shutil.copy(summary, self.root / "summary.json")
        shutil.rmtree(self.run_dir, ignore_errors=True)


@dataclass
class PilotRun:
    exit_code: int
    wall_s: float
    output: str


def _command(site: Site, server_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nodepilot", "start", "--queue", cric.QUEUE, "--server", server_url,
            "--queuedata", str(site.queuedata), "--workdir", str(site.work), "--run-dir", str(site.run_dir),
            *extra]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "PANDA_"))}
    env["PYTHONPATH"] = str(REPO)
    env["NODEPILOT_ISOLATION_BINDS"] = str(EXAMPLES)  # payloads run examples/ scripts in the sandbox
    return {**env, **(extra or {})}


def start(site: Site, server_url: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (site.root / "pilot.log").open("ab")
    return subprocess.Popen(_command(site, server_url, *extra), env=_env(env), stdout=log, stderr=subprocess.STDOUT,
                            cwd=site.root)


def finish(proc: subprocess.Popen, site: Site, started: float, timeout: float = PILOT_TIMEOUT_S) -> PilotRun:
    """Wait for a pilot (killed when it overruns ``timeout``)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    return PilotRun(proc.returncode, time.monotonic() - started, (site.root / "pilot.log").read_text(errors="replace"))


def run(site: Site, server_url: str, *extra: str, env: dict[str, str] | None = None,
        timeout: float = PILOT_TIMEOUT_S) -> PilotRun:
    started = time.monotonic()
    return finish(start(site, server_url, *extra, env=env), site, started, timeout)
