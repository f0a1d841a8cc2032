"""Twenty jobs at once in one process (``--in-process --slots 20``): the services share one loop and one
thread pool sized for all of them, so no watchdog check and no transfer waits behind the payloads' wait4
threads. Short jobs are staged out and reported while long ones still run; every running job's checks stay
fresh (period 1 s). Prints the figures (check staleness, stage-out seconds)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from nodepilot.http import uds_client
from tests.e2e.conftest import NODEPILOT, add_jobs, final_update, kill_if_running, write_queuedata
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until

LONG = list(range(7601, 7617))  # as many as the stager's own pool had threads: it once replaced the shared one
SHORT = list(range(7617, 7621))  # asked for last: their ends must not wait for the long ones'


def short_job(panda_id: int) -> dict:
    out = f"out.{panda_id}.dat"
    return {**sleep_job(panda_id, 1), "jobPars": f"-c 'date +%s.%N > t_start; sleep 1; head -c 2000000 /dev/zero > "
                                               f"{out}; date +%s.%N > t_end'",
            "outFiles": f"{out},hpc.{panda_id}.log.tgz", "scopeOut": "hpc.out"}


def check_times(run_dir: Path) -> dict[int, dict[str, float]]:
    """For each running job: when each of its watchdog checks last started."""
    with uds_client(run_dir / "monitor.sock", timeout=5) as client:
        status = client.get("/status").json()
    return {run["panda_id"]: {name: c["time"] for name, c in run["checks"].items()} for run in status["running"]}


def staleness(samples: list[tuple[float, dict[int, dict[str, float]]]], started: dict[int, float]) -> list[float]:
    """Seconds since each job's least recent check started, at each sample (a check that never ran: since
    the payload started), for every check any job ran."""
    names = {name for _t, jobs in samples for checks in jobs.values() for name in checks}
    return [now - min(checks.get(name, started[job]) for name in names)
            for now, jobs in samples for job, checks in jobs.items() if job in started]


def test_twenty_slots_in_process_keep_checks_and_transfers_going(site: Path, job_server):
    add_jobs(site, *(sleep_job(i, 14) for i in LONG), *(short_job(i) for i in SHORT))
    queuedata = write_queuedata(site, watchdog={"period_s": 1})
    run_dir = Path(tempfile.mkdtemp(prefix="np-20-"))
    work = site / "work"
    log = site / "pilot.log"
    with log.open("w") as out:
        pilot = subprocess.Popen([*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url,
                                  "--workdir", str(work), "--se-dir", str(site / "se"), "--queuedata", queuedata,
                                  "--in-process", "--slots", "20", "--max-jobs", "20", "--run-dir", str(run_dir),
                                  "--keep-workdirs"], stdout=out, stderr=subprocess.STDOUT)
    samples: list[tuple[float, dict[int, dict[str, float]]]] = []
    try:
        wait_until(lambda: all((work / f"PanDA_Pilot-{i}" / "t_start").exists() for i in LONG + SHORT), 60,
                   "all twenty payloads started")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # bounded: 6 s of samples while the long payloads run
            samples.append((time.time(), check_times(run_dir)))
            time.sleep(0.5)
        pilot.wait(120)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == 0, log.read_text()[-3000:]
    jobs = job_server.jobs()
    assert all(final_update(jobs[i])["job_status"] == "finished" for i in LONG + SHORT)
    started = {i: float((work / f"PanDA_Pilot-{i}" / "t_start").read_text()) for i in LONG + SHORT}
    stale = staleness(samples, started)
    long_ends = min(float((work / f"PanDA_Pilot-{i}" / "t_end").read_text()) for i in LONG)
    short_reported = max(jobs[i]["updates"][-1]["time"] for i in SHORT)
    summary = {r["panda_id"]: r for r in json.loads((run_dir / "summary.json").read_text())}
    stageout = [summary[i]["timings"]["stageout"] for i in SHORT]
    print(f"\n20 slots in-process: check staleness max {max(stale):.2f} s over {len(stale)} samples "
          f"(period 1 s); short jobs' stage-out + log: max {max(stageout):.2f} s, mean "
          f"{sum(stageout) / len(stageout):.2f} s; last short job reported {long_ends - short_reported:.1f} s "
          "before the first long payload ended")
    assert stale and max(stale) < 5.0, stale  # a check waiting behind the payloads would be 10 s stale
    assert max(stageout) < 8.0, stageout
    assert short_reported < long_ends  # every short job staged out and reported while the long ones ran
