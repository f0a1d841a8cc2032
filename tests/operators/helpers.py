"""A real pilot for the operator tools: ``nodepilot run`` on a local SE, its sockets, its updates."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodepilot.http import uds_client

NODEPILOT = [sys.executable, "-m", "nodepilot"]

# grows its memory by 4 MB every 0.1 s until the file "release" appears in its work dir (at most 40 s)
GROWING_PAYLOAD = (
    "import os, time\n"
    "blocks = []\n"
    "for i in range(400):\n"
    "    if os.path.exists('release'):\n"
    "        break\n"
    "    if len(blocks) < 40:\n"
    "        blocks.append(bytearray(4 << 20))\n"
    "    time.sleep(0.1)\n"
    "open('out.txt', 'w').write('done')\n"
)


def queuedata(base: Path, se: Path, **extra: Any) -> Path:
    """A queue on a local SE, sampling the payload every 0.2 s."""
    url = se.resolve().as_uri()
    endpoints = {a: [{"name": "LOCAL_SE", "url": url, "id": 1}] for a in ("read_lan", "write_lan", "pl", "es_events")}
    data = {"name": "OPS_TEST", "site": "OPS_TEST", "endpoints": endpoints, "watchdog": {"sample_interval_s": 0.2},
            **extra}
    path = base / "queue.json"
    path.write_text(json.dumps(data))
    return path


def job(panda_id: int, transformation: str, job_pars: str, **extra: Any) -> dict[str, Any]:
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": transformation, "jobPars": job_pars,
            "outFiles": f"out.txt,log{panda_id}.tgz", "logFile": f"log{panda_id}.tgz", "scopeOut": "ops.out",
            "scopeLog": "ops.log", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pilot:
    base: Path
    run_dir: Path
    workdir: Path
    web_port: int
    process: subprocess.Popen
    stderr: Path

    def status(self, service: str = "monitor") -> dict[str, Any] | None:
        sock = self.run_dir / f"{service}.sock"
        with contextlib.suppress(Exception), uds_client(sock, timeout=5) as client:
            return client.get("/status").json()
        return None

    def wait_for(self, predicate: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
        """Until the monitor's /status satisfies ``predicate`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the pilot ended early: {self.stderr.read_text()[-2000:]}"
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.1)
        raise TimeoutError(f"{what} not seen within {timeout} s; last status {self.status()}")


def start_pilot(base: Path, job_def: dict[str, Any] | None, *extra: str, queue: Path | None = None,
                web_port: int = 0, server: str = "") -> Pilot:
    """``nodepilot run`` of ``job_def`` (or ``nodepilot start`` against ``server``) as a process, its
    run dir short (a Unix socket path has at most 107 bytes)."""
    se, work = base / "se", base / "work"
    se.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="npo-"))
    stderr = base / "pilot.stderr"
    if job_def is not None:
        job_file = base / f"job{job_def['PandaID']}.json"
        job_file.write_text(json.dumps(job_def))
        command = ["run", str(job_file)]
    else:
        command = ["start", "--server", server]
    args = [*NODEPILOT, *command, "--workdir", str(work), "--se-dir", str(se), "--run-dir", str(run_dir),
            "--queuedata", str(queue or queuedata(base, se))]
    if web_port:
        args += ["--web-port", str(web_port)]
    with stderr.open("w") as err:
        proc = subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=err, text=True)
    return Pilot(base, run_dir, work, web_port, proc, stderr)


def finish(pilot: Pilot, timeout: float = 30.0) -> str:
    """Wait for the pilot's end (kill it past ``timeout``); its stdout."""
    try:
        out, _ = pilot.process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pilot.process.kill()
        out, _ = pilot.process.communicate(timeout=10)
    shutil.rmtree(pilot.run_dir, ignore_errors=True)
    return out


def updates(workdir: Path) -> list[dict[str, Any]]:
    """The standalone pilot's updates (``nodepilot run`` writes them to <workdir>/updates.jsonl)."""
    lines = (workdir / "updates.jsonl").read_text().splitlines()
    return [entry["fields"] for entry in map(json.loads, lines) if "fields" in entry]


def final(workdir: Path, panda_id: int) -> dict[str, Any]:
    finals = [u for u in updates(workdir) if u.get("jobId") == panda_id and u.get("state") in ("finished", "failed")]
    assert finals, f"no final update of {panda_id}: {updates(workdir)}"
    return finals[-1]
