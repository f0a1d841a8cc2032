"""Fault injection through the whole pilot, shared by tests/e2e/test_fault_injection.py (a few trials
per victim in CI) and bench/chaos.py (20 per victim, the table): a service or the embedded Redis
killed with SIGKILL at a random moment of a job, then what the job's end shows.

A trial is one job. Several trials share a pilot (``--max-jobs``), except for the monitor: a
monitor killed while it asks the server for the next job loses that job (the server dispatched it,
the pilot never learnt of it: a window of the protocol, not of the pilot), so each monitor trial
has a pilot of its own. The kill moment is counted from the appearance of the job's work dir.

The stager runs only while it works for a job (stage-in, then stage-out: nodepilot/demand.py). In its trials the
queue's copysetup takes STAGER_SETUP_S, longer than the payload: each stager holds its request that long, so a
kill within the payload's length lands while the stager stages the job's inputs in.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.harness import (
    NODEPILOT,
    JobServer,
    add_jobs,
    es_job,
    final_update,
    kill_if_running,
    ranges,
    settled,
    write_queuedata,
)

VICTIMS = ("monitor", "runner", "stager", "eventclient", "redis")
PER_PILOT = 4  # at most MAX_RESTARTS kills of one victim per pilot
PAYLOAD_S = 1.2  # the payload's own length (merge: one sleep; event service: 12 ranges of 0.1 s)
ES_RANGES = 12
STAGER_SETUP_S = PAYLOAD_S + 0.3  # each stager's copysetup: it holds its request that long
INPUTS = ("demo.input.1.txt", "demo.input.2.txt")
JOB_TIMEOUT_S = 60


class TrialError(Exception):
    """A pilot or a job that did not do what a trial needs (it never started, never ended)."""


@dataclass
class Trial:
    panda_id: int
    moment: float  # s after the work dir appeared
    killed: bool = False  # the kill landed while the job was in progress
    note: str = ""
    problems: list[str] = field(default_factory=list)  # wrong final update, outputs missing or wrong

    @property
    def line(self) -> str:
        return f"job {self.panda_id}: {self.note}" + (f"; PROBLEMS: {self.problems}" if self.problems else "")


def merge_job(panda_id: int) -> dict:
    """Two inputs in, one output out (the inputs and the job's id), a payload of PAYLOAD_S in between."""
    payload = (f"-c 'cat {' '.join(INPUTS)} > out_{panda_id}.txt; sleep {PAYLOAD_S}; "
               f"echo {panda_id} >> out_{panda_id}.txt'")
    return {
        "PandaID": panda_id, "attemptNr": 1, "transformation": "bash", "jobPars": payload,
        "inFiles": ",".join(INPUTS), "fsize": "17000,28000", "checksum": "ad:53332ef2,ad:e48e79b9",
        "scopeIn": "demo.data,demo.data", "outFiles": f"out_{panda_id}.txt,l{panda_id}.tgz",
        "logFile": f"l{panda_id}.tgz", "scopeOut": "demo.output", "scopeLog": "demo.log",
    }


def jobs_for(victim: str, ids: list[int]) -> list[dict]:
    if victim == "eventclient":  # it only serves event-service jobs
        return [{**es_job(i, f"--n 2 --sleep {PAYLOAD_S / ES_RANGES}"), "_event_ranges": ranges(ES_RANGES)}
                for i in ids]
    return [merge_job(i) for i in ids]


def start_pilot(site: Path, server_url: str, log_path: Path, max_jobs: int, *extra: str) -> subprocess.Popen:
    with log_path.open("a") as log:  # a file, not a pipe: a pilot that logs a lot never blocks on it
        return subprocess.Popen(
            [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", server_url, "--workdir", str(site / "work"),
             "--se-dir", str(site / "se"), "--max-jobs", str(max_jobs), *extra],
            stdout=log, stderr=subprocess.STDOUT)


def victim_pid(pilot: subprocess.Popen, victim: str, timeout: float = 10.0) -> int | None:
    """The victim's pid among the launcher's children (a service by the socket it serves on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pilot.poll() is None:
        for child in psutil.Process(pilot.pid).children():
            try:
                if victim == "redis":
                    if "redis-server" in child.name():
                        return child.pid
                    continue
                if any(c.laddr.endswith(f"/{victim}.sock") for c in child.net_connections(kind="unix")):
                    return child.pid
            except psutil.Error:
                pass
        time.sleep(0.02)
    return None


def final_of(server: JobServer, panda_id: int) -> dict | None:
    job = server.jobs().get(panda_id)
    if not job or not any((u.get("job_status") or u.get("state")) in ("finished", "failed") for u in job["updates"]):
        return None
    return final_update(job)


def _tail(log_path: Path) -> str:
    return log_path.read_text()[-6000:]


def wait_final(server: JobServer, panda_id: int, pilot: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (update := final_of(server, panda_id)) is None:
        if time.monotonic() > deadline:
            raise TrialError(f"job {panda_id}: no final update\n{_tail(log_path)}")
        if pilot.poll() is not None and not final_of(server, panda_id):
            raise TrialError(f"the pilot ended (exit {pilot.returncode}) before job {panda_id}\n{_tail(log_path)}")
        time.sleep(0.05)
    return update


def wait_started(site: Path, pilot: subprocess.Popen, panda_id: int, log_path: Path) -> float:
    """When the job's work dir appeared (epoch)."""
    workdir = site / "work" / f"PanDA_Pilot-{panda_id}"
    deadline = time.monotonic() + 30
    while not workdir.exists():
        if time.monotonic() > deadline or pilot.poll() is not None:
            raise TrialError(f"job {panda_id} never started\n{_tail(log_path)}")
        time.sleep(0.005)
    return time.time()


def kill_at(server: JobServer, pilot: subprocess.Popen, victim: str, trial: Trial, started: float,
            log_path: Path) -> None:
    """Kill the victim ``trial.moment`` s after ``started``, if the job is still in progress then."""
    time.sleep(max(0.0, started + trial.moment - time.time()))
    pid = victim_pid(pilot, victim)
    if pid is None and pilot.poll() is None:
        raise TrialError(f"no {victim} to kill\n{_tail(log_path)}")
    if pid is None or final_of(server, trial.panda_id) is not None:
        trial.note = f"ended before {trial.moment:.2f} s, not killed"
        return
    os.kill(pid, signal.SIGKILL)
    trial.killed, trial.note = True, f"{victim} (pid {pid}) killed {trial.moment:.2f} s in"


def merge_job_problems(site: Path, update: dict, panda_id: int) -> list[str]:
    """What is wrong with a merge job's end: its final update, its outputs on the SE (checksum, size, content)."""
    from nodepilot.checksums import file_checksum
    from services.stager.paths import deterministic_path

    if update["job_status"] != "finished" or update.get("pilot_error_code"):
        return [f"final update {update['job_status']} {update.get('pilot_error_code')}: "
                f"{update.get('pilot_error_diag')}"]
    report = json.loads(update["job_output_report"])
    if set(report) != {f"out_{panda_id}.txt", f"l{panda_id}.tgz"}:
        return [f"file report {sorted(report)}"]
    problems = []
    for lfn, scope in ((f"out_{panda_id}.txt", "demo.output"), (f"l{panda_id}.tgz", "demo.log")):
        stored = site / "se" / deterministic_path(scope, lfn)
        if not stored.is_file():
            problems.append(f"{lfn} is not on the SE")
        elif file_checksum(stored) != report[lfn]["adler32"] or stored.stat().st_size != report[lfn]["fsize"]:
            problems.append(f"{lfn} on the SE differs from the report (checksum or size)")
    inputs = b"".join((site / "se" / deterministic_path("demo.data", lfn)).read_bytes() for lfn in INPUTS)
    out = site / "se" / deterministic_path("demo.output", f"out_{panda_id}.txt")
    if out.is_file() and out.read_bytes() != inputs + f"{panda_id}\n".encode():
        problems.append(f"out_{panda_id}.txt has the wrong content")
    return problems


def es_job_problems(site: Path, server: JobServer, update: dict, panda_id: int) -> list[str]:
    """Every range settled exactly once, each finished one's output on the SE with its size; a range
    handed out in an answer the killed eventclient never sent is failed as recoverable (1224: the
    server dispatches it again), never lost nor reported twice."""
    if update["job_status"] != "finished" or update.get("pilot_error_code"):
        return [f"final update {update['job_status']} {update.get('pilot_error_code')}"]
    by_status, problems = settled(server, panda_id, site / "se")
    failed = by_status.get("failed", [])
    if len(by_status.get("finished", [])) + len(failed) != ES_RANGES:
        problems.append(f"{len(by_status.get('finished', []))} finished + {len(failed)} failed ranges")
    if not {u["errorCode"] for u in failed} <= {1224}:
        problems.append(f"failed ranges with codes {sorted({u['errorCode'] for u in failed})}")
    return problems


def run_trials(site: Path, server: JobServer, victim: str, trials: int, base_id: int,
               moment: Callable[[list[float]], float], log_path: Path) -> list[Trial]:
    """``trials`` jobs, the victim killed once in each at ``moment(lengths of the jobs so far)``."""
    ids = list(range(base_id, base_id + trials))
    add_jobs(site, *jobs_for(victim, ids))
    per_pilot = 1 if victim == "monitor" else PER_PILOT
    options = ("--queuedata", write_queuedata(site, copysetup=f"sleep {STAGER_SETUP_S}")) if victim == "stager" else ()
    done: list[Trial] = []
    lengths: list[float] = []  # of the jobs so far, from the work dir to the final update at the server
    for first in range(0, len(ids), per_pilot):
        batch = ids[first:first + per_pilot]
        pilot = start_pilot(site, server.url, log_path, len(batch), *options)
        try:
            for panda_id in batch:
                started = wait_started(site, pilot, panda_id, log_path)
                trial = Trial(panda_id, moment(lengths))
                kill_at(server, pilot, victim, trial, started, log_path)
                lengths.append(wait_final(server, panda_id, pilot, log_path)["time"] - started)
                done.append(trial)
            if pilot.wait(60) != 0:
                raise TrialError(f"the pilot exited {pilot.returncode}\n{_tail(log_path)}")
        finally:
            kill_if_running(pilot)
    for trial in done:
        update = final_update(server.jobs()[trial.panda_id])
        trial.problems = (es_job_problems(site, server, update, trial.panda_id) if victim == "eventclient"
                          else merge_job_problems(site, update, trial.panda_id))
    return done


def within_payload(rng: random.Random) -> Callable[[list[float]], float]:
    """Moments uniform over the payload's own length: no job is shorter, so every kill lands."""
    return lambda _lengths: rng.uniform(0.0, PAYLOAD_S)


def over_the_job(rng: random.Random) -> Callable[[list[float]], float]:
    """Moments uniform over the whole job (stage-in to final update) as the jobs before measured it
    (their median; the payload's length for the first): some may fall after a shorter job's end."""
    import statistics

    return lambda lengths: rng.uniform(0.0, statistics.median(lengths) if lengths else PAYLOAD_S)
