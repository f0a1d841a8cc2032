"""Running the whole pilot as a user does, shared by the benchmarks and the end-to-end tests (which
import it; bench/ imports nothing from tests/): ``nodepilot serve`` as a process, job files, sleep
jobs that stamp their payload's start and end, event-service jobs and the server's range ledger."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from nodepilot.config import PilotConfig
from nodepilot.http import uds_client

# the benchmarks read each payload's stamps in its job's work dir afterwards: the pilots they start keep
# their work dirs (a pilot removes them by default once a job's log is out)
os.environ.setdefault("NODEPILOT_KEEP_WORKDIRS", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# the processes started here run this tree's code, never another copy the interpreter has installed
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(ROOT):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
NODEPILOT = [sys.executable, "-m", "nodepilot"]
ES_SCOPE_OUT = "demo.es"  # an event-service job has no output but its log: range outputs go to the log's scope
FINAL_RANGE_STATES = ("finished", "failed", "fatal")


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


def write_queuedata(site: Path, **fields: object) -> str:
    """``<site>/queuedata.json``: the site's SE for every activity, plus ``fields``; returns its path."""
    eps = [{"name": "LOCAL_SE", "url": (site / "se").resolve().as_uri(), "id": 1}]
    data = {"name": "LOCAL_TEST", "site": "LOCAL_TEST",
            "endpoints": {a: eps for a in ("read_lan", "write_lan", "pl", "es_events")}, **fields}
    path = site / "queuedata.json"
    path.write_text(json.dumps(data))
    return str(path)


def add_jobs(site: Path, *jobs: dict | Path) -> None:
    for i, job in enumerate(jobs):
        if isinstance(job, Path):
            shutil.copy(job, site / "jobs" / job.name)
        else:
            (site / "jobs" / f"{i:02d}_{job['PandaID']}.json").write_text(json.dumps(job))


def kill_if_running(proc: subprocess.Popen) -> None:
    """For a ``finally``: a pilot that did not end by itself is not left behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


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


def sleep_job(panda_id: int, seconds: float, cores: int = 1, ram_mb: int = 100) -> dict:
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": "bash", "coreCount": cores, "minRamCount": ram_mb,
            "jobPars": f"-c 'date +%s.%N > t_start; sleep {seconds:g}; date +%s.%N > t_end'",
            "outFiles": f"hpc.{panda_id}.log.tgz", "logFile": f"hpc.{panda_id}.log.tgz", "scopeLog": "hpc.log"}


def intervals(work: Path, panda_ids: list[int]) -> dict[int, tuple[float, float]]:
    """(payload start, end) of each job, from the stamps in its work dir."""
    out = {}
    for panda_id in panda_ids:
        wd = work / f"PanDA_Pilot-{panda_id}"
        out[panda_id] = (float((wd / "t_start").read_text()), float((wd / "t_end").read_text()))
    return out


def es_job(panda_id: int, payload_args: str = "", payload: str = "es_payload.py", transformation: str = "python3"
           ) -> dict:
    return {
        "PandaID": panda_id, "attemptNr": 1, "jobsetID": 7, "taskID": 70, "eventService": "True",
        "transformation": transformation, "jobPars": f"{EXAMPLES / payload} {payload_args}",
        "outFiles": f"es{panda_id}.log.tgz", "logFile": f"es{panda_id}.log.tgz", "scopeLog": ES_SCOPE_OUT,
    }


def ranges(n: int, events_per_range: int = 10) -> list[dict]:
    return [{"eventRangeID": f"70-{i}-1-{i}-1", "startEvent": i * events_per_range + 1,
             "lastEvent": (i + 1) * events_per_range, "LFN": "EVNT.pool.root", "GUID": "g", "scope": "demo"}
            for i in range(n)]


def ledger(server: JobServer, panda_id: int) -> list[dict]:
    reply = httpx.get(f"{server.url}/jobs/{panda_id}/ranges", timeout=10)
    reply.raise_for_status()
    return reply.json()


def settled(server: JobServer, panda_id: int, se: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """The final report of each range attempt in the server's ledger, by final status, and what is
    wrong: a range not final, an attempt never reported or reported twice, a finished one's output
    not on the SE with the size reported."""
    from services.stager.paths import deterministic_path

    by_status: dict[str, list[dict]] = defaultdict(list)
    problems: list[str] = []
    for item in ledger(server, panda_id):
        if item["status"] not in FINAL_RANGE_STATES:
            problems.append(f"range {item['eventRangeID']} is {item['status']}, not final")
            continue
        attempts: dict[str, list[dict]] = defaultdict(list)
        for update in item["updates"]:
            attempts[update["eventRangeID"]].append(update)
        if len(attempts) != item["attempts"]:
            problems.append(f"an attempt never reported: {item}")
        for rid, updates in attempts.items():
            if len(updates) != 1 or not updates[0]["applied"]:
                problems.append(f"{rid} reported {len(updates)} times: {updates}")
            by_status[updates[0]["eventStatus"]].append(updates[0])
        last = item["updates"][-1]
        if (last["eventStatus"], last["eventRangeID"]) != (item["status"], item["eventRangeID"]):
            problems.append(f"the ledger's status is not its last update: {item}")
    for update in by_status["finished"]:
        zip_file = update["zipFile"]
        stored = se / deterministic_path(ES_SCOPE_OUT, zip_file["lfn"])
        if not (stored.is_file() and stored.stat().st_size == zip_file["fsize"]):
            problems.append(f"{zip_file['lfn']} is not on the SE with {zip_file['fsize']} bytes")
    return dict(by_status), problems


@contextlib.contextmanager
def running_service(name: str, config: PilotConfig, timeout: float = 20.0) -> Iterator[subprocess.Popen]:
    """Start one service as a real process and wait until /healthz answers on its socket."""
    config.save()
    proc = subprocess.Popen([sys.executable, "-m", "nodepilot", "service", name, "-c", str(config.config_path)])
    try:
        wait_healthy(config.socket_path(name), proc, timeout)
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_healthy(sock: Path, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before it was healthy")
        if sock.exists():
            with contextlib.suppress(Exception), uds_client(sock, timeout=2) as c:
                if c.get("/healthz").status_code == 200:
                    return
        time.sleep(0.02)
    raise TimeoutError(f"no healthy service on {sock} within {timeout} s")


def read_events(r: redis.Redis, job_id: int, types: set[str], timeout: float = 30.0) -> list[dict]:
    """Block on a job's event stream (as the monitor does) until one of ``types`` arrives."""
    seen: list[dict] = []
    last = "0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = r.xread({f"job:{job_id}:events": last}, block=500)
        for _s, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                event = json.loads(fields["data"])
                seen.append(event)
                if event.get("type") in types:
                    return seen
    raise TimeoutError(f"none of {types} for job {job_id} within {timeout} s; saw {seen}")
