"""``nodepilot start`` with a CRIC-defined queue against ``nodepilot serve``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import EXAMPLES, NODEPILOT
from tests.queue.cric import write

QUEUE = "CRIC_TEST"


def publish(site: Path, record: dict, ddms: dict) -> tuple[str, str]:
    """The queue record and the DDM endpoints as files (file:// URLs, as --queuedata-url takes them)."""
    queue = write(site / f"{QUEUE}.all.json", record)
    storage = write(site / "ddmendpoints.json", ddms)
    return Path(queue).as_uri(), Path(storage).as_uri()


def start(site: Path, server_url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*NODEPILOT, "start", "-q", QUEUE, "--url", server_url, "-a", str(site / "work"), *args],
                          capture_output=True, text=True, timeout=timeout)


def cric_start(site: Path, server_url: str, record: dict, ddms: dict, *args: str,
               timeout: float = 180) -> subprocess.CompletedProcess:
    queue, storage = publish(site, record, ddms)
    return start(site, server_url, "--queuedata-url", queue, "--storagedata-url", storage, *args, timeout=timeout)


def merge_job(panda_id: int, ddm_in: str, ddm_out: str, ddm_log: str) -> dict[str, Any]:
    job = json.loads((EXAMPLES / "jobs" / "02_merge_inputs.json").read_text())
    return {**job, "PandaID": panda_id, "ddmEndPointIn": f"{ddm_in},{ddm_in}", "ddmEndPointOut": f"{ddm_out},{ddm_log}",
            "outFiles": f"merged.txt,demo.{panda_id}.log.tgz", "logFile": f"demo.{panda_id}.log.tgz"}


def short_job(panda_id: int, seconds: float = 0, **extra: Any) -> dict[str, Any]:
    return {"PandaID": panda_id, "attemptNr": 1, "taskID": 700, "transformation": "bash",
            "jobPars": f"-c 'sleep {seconds}; echo done > out.txt'", "outFiles": f"out.txt,log{panda_id}.tgz",
            "logFile": f"log{panda_id}.tgz", "scopeOut": "demo.output", "scopeLog": "demo.log",
            "maxWalltime": 600, **extra}


def acquire_params(site: Path) -> list[dict[str, Any]]:
    """Every job request the server answered with a job, as received."""
    with sqlite3.connect(site / "server.sqlite") as db:
        return [json.loads(row[0]) for row in db.execute("SELECT acquire_params FROM jobs ORDER BY id")]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if " ERROR " in line or line.startswith("nodepilot")]
