"""What the event-service tests share: they play the monitor (start/finish requests, reading the
job's events) and run the example payload; the stager and the eventclient are real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from nodepilot import bus
from nodepilot.config import PilotConfig
from services.stager.paths import deterministic_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "es_payload.py"
EXAMPLE_SH = EXAMPLE.with_suffix(".sh")
SCOPE_OUT = "demo.es"
EVENTS_PER_RANGE = 10
JOB = 4242
N_RANGES = 50


def make_ranges(path: Path, job_id: int, n: int) -> list[dict[str, Any]]:
    ranges = [{"eventRangeID": f"77-{job_id}-1-{i}-1", "startEvent": i * EVENTS_PER_RANGE + 1,
               "lastEvent": (i + 1) * EVENTS_PER_RANGE, "LFN": "EVNT.pool.root", "GUID": str(uuid.uuid4()),
               "scope": "demo.data"} for i in range(n)]
    path.write_text(json.dumps(ranges))
    return ranges


def workdir(cfg: PilotConfig, job_id: int) -> Path:
    return Path(cfg.work_dir) / f"PanDA_Pilot-{job_id}"


def start(rds: redis.Redis, cfg: PilotConfig, job_id: int, ranges_file: Path, report_file: Path,
          **extra: Any) -> str:
    request_id = f"{job_id}:0:es-start"
    wd = workdir(cfg, job_id)
    wd.mkdir(parents=True, exist_ok=True)
    endpoints = [{"name": e.name, "url": e.url} for e in cfg.queuedata.endpoints_for("es_events")]
    message = {"action": "start", "job_id": job_id, "request_id": request_id, "workdir": str(wd),
               "jobset_id": 5, "task_id": 77, "batch": 10, "endpoints": endpoints, "scope_out": SCOPE_OUT,
               "ranges_file": str(ranges_file), "report_file": str(report_file),
               "report_batch": 10, "report_interval_s": 0.5, **extra}
    rds.xadd(bus.EVENTCLIENT_REQUESTS, bus.encode(message))
    return request_id


def finish(rds: redis.Redis, job_id: int, reason: str = "payload finished", request_id: str = "") -> str:
    request_id = request_id or f"{job_id}:0:es-finish"
    rds.xadd(bus.EVENTCLIENT_REQUESTS, bus.encode({"action": "finish", "job_id": job_id,
                                                   "request_id": request_id, "reason": reason}))
    return request_id


def wait_event(rds: redis.Redis, job_id: int, type_: str, request_id: str, after: str = "0",
               timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
    """The first event of ``type_`` answering ``request_id`` after entry ``after``: (entry id, event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _s, entries in rds.xread({bus.job_events(job_id): after}, block=500) or []:
            for entry_id, fields in entries:
                after = entry_id
                event = bus.decode(fields)
                if event.get("type") == type_ and event.get("request_id") == request_id:
                    return entry_id, event
    raise TimeoutError(f"no {type_} for {request_id} within {timeout} s")


def run_payload(sock: str, wd: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=wd, capture_output=True, text=True,
                          env={**os.environ, "NODEPILOT_EVENTS_SOCKET": sock}, timeout=timeout)


def run_bash_payload(env: dict[str, str], wd: Path, *args: str, timeout: float = 90.0
                     ) -> subprocess.CompletedProcess[str]:
    """examples/es_payload.sh with the environment es_ready gave (the line protocol's FIFOs)."""
    return subprocess.run(["bash", str(EXAMPLE_SH), *args], cwd=wd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def start_payload(sock: str, wd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(EXAMPLE), *args], cwd=wd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NODEPILOT_EVENTS_SOCKET": sock})


def reports(report_file: Path) -> dict[str, list[dict[str, Any]]]:
    """Every report of every range in the report file, by range id (each should have exactly one)."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in report_file.read_text().splitlines() if report_file.exists() else []:
        record = json.loads(line)
        for item in record["eventRanges"]:
            if record["version"] == 1:
                for er in item["eventRanges"]:
                    seen[er["eventRangeID"]].append({"status": er["eventStatus"], "zip": item["zipFile"]})
            else:
                seen[item["eventRangeID"]].append({"status": item["eventStatus"], "errorCode": item["errorCode"]})
    return dict(seen)


def se_file(cfg: PilotConfig, lfn: str) -> Path:
    return Path(cfg.se_dir) / deterministic_path(SCOPE_OUT, lfn)



def begin(rds: redis.Redis, cfg: PilotConfig, files: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    """Start job JOB with a ranges file; its es_ready event (ok, with the payload API)."""
    request_id = start(rds, cfg, JOB, *files, **extra)
    _, ready = wait_event(rds, JOB, "es_ready", request_id)
    assert ready["ok"] is True and ready["error_code"] == 0
    wd = workdir(cfg, JOB)
    assert ready["socket"] == str(wd / "events.sock")
    assert ready["env"] == {"NODEPILOT_EVENTS_SOCKET": ready["socket"], "NODEPILOT_EVENTS_IN": str(wd / "events.in"),
                            "NODEPILOT_EVENTS_OUT": str(wd / "events.out")}
    return ready


def end(rds: redis.Redis, reason: str = "payload finished", request_id: str = "") -> dict[str, Any]:
    return wait_event(rds, JOB, "es_done", finish(rds, JOB, reason, request_id))[1]


def assert_reported_once(report_file: Path, finished: set[str], failed: dict[str, int]) -> None:
    seen = reports(report_file)
    assert {rid for rid, items in seen.items() if len(items) != 1} == set(), "a range reported twice"
    assert {rid for rid, items in seen.items() if items[0]["status"] == "finished"} == finished
    assert {rid: items[0]["errorCode"] for rid, items in seen.items() if items[0]["status"] == "failed"} == failed


def ids(*indexes: int) -> set[str]:
    return {f"77-{JOB}-1-{i}-1" for i in indexes}
