"""Fault injection through the whole pilot (bench/faults.py): a service (or the embedded Redis) killed
with SIGKILL at a random moment of a job is restarted, and every job still ends with the right final
update and every output on the SE with the checksum the update reports.

Each trial is one job; the victim is killed once at a random moment after the job's work dir
appeared, uniform over the payload's own length (PAYLOAD_S): no job is shorter than its payload, so
every kill lands inside its job (stage-in, payload start, the payload) and a trial whose job ended
first fails. The kills after the payload (stage-out, log, final update) are tests of their own
(test_signals_and_healing.py) and bench/chaos.py's, whose moments are uniform over the whole
measured length of the jobs, 20 trials per victim.

NODEPILOT_FAULT_TRIALS sets the trials per victim (default 4). The seed of each run is printed;
NODEPILOT_FAULT_SEED replays one.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import psutil
import pytest

from bench.faults import (
    PAYLOAD_S,
    VICTIMS,
    merge_job,
    merge_job_problems,
    run_trials,
    start_pilot,
    victim_pid,
    wait_final,
    within_payload,
)
from tests.e2e.conftest import add_jobs, kill_if_running

TRIALS = int(os.environ.get("NODEPILOT_FAULT_TRIALS", "4"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", VICTIMS)
def test_a_victim_killed_at_a_random_moment_of_each_job(site, job_server, victim):
    seed = int(os.environ.get("NODEPILOT_FAULT_SEED") or random.randrange(10**9))
    print(f"fault injection: victim {victim}, {TRIALS} trials, seed {seed}")
    log_path = site / "pilot.log"
    trials = run_trials(site, job_server, victim, TRIALS, 8000 + 100 * VICTIMS.index(victim),
                        within_payload(random.Random(seed)), log_path)
    print("\n".join(t.line for t in trials))
    assert all(t.killed for t in trials), [t.line for t in trials]  # every moment falls inside its job
    assert log_path.read_text().count(f"{victim} died") == len(trials)
    assert not [t.line for t in trials if t.problems]


@pytest.mark.parametrize("mode", [(), ("--in-process",)], ids=["processes", "in-process"])
def test_redis_killed_mid_payload_comes_back_from_its_append_only_file(site, job_server, mode):
    """A deterministic case of the above: Redis dies while the payload runs (every service holds
    connections, the runner's request is pending, the monitor blocks on the job's stream); the same
    in both modes (one restart policy, nodepilot/supervision.py)."""
    job = merge_job(8900)
    job["jobPars"] = job["jobPars"].replace(f"sleep {PAYLOAD_S};",
                                            "touch started; while [ ! -e go ]; do sleep 0.05; done;")
    add_jobs(site, job)
    log_path = site / "pilot.log"
    pilot = start_pilot(site, job_server.url, log_path, 1, *mode)
    try:
        workdir = site / "work" / "PanDA_Pilot-8900"
        deadline = time.monotonic() + 30
        while not (workdir / "started").exists():
            assert time.monotonic() < deadline, log_path.read_text()[-6000:]
            time.sleep(0.02)
        redis = psutil.Process(victim_pid(pilot, "redis"))
        aof = Path(redis.cwd()) / "appendonly.aof"
        assert aof.stat().st_size > 0  # every write of the job so far is in it
        redis.kill()
        redis.wait(10)
        (workdir / "go").touch()
        update = wait_final(job_server, 8900, pilot, log_path)
        assert pilot.wait(60) == 0, log_path.read_text()[-6000:]
    finally:
        kill_if_running(pilot)
    log = log_path.read_text()
    assert "redis died (exit -9): restarting" in log and "Redis restarted from its append-only file" in log, log
    assert not merge_job_problems(site, update, 8900)
