"""What supervising many jobs at once costs: a 16-slot pilot running 16 one-core sleep jobs at the same time
on one node, against a one-slot pilot running one. The figure is the pilot's CPU seconds (every pilot
process: launcher, services, Redis; payloads excluded) per second of payload wall time, while the payloads
run, and over the pilot's whole life. 16 slots oversubscribe a machine with fewer cores on purpose (the
payloads sleep); the header says how many cores this one has (the CPUs this process may run on).
Prints figures and the ratios: "all running" counts only the time every payload ran (supervision alone),
"while running" from the first payload's start to the last one's end (with the other jobs' set-up and
stage-out), "whole life" from launch to exit.

Usage: python bench/multislot.py [seconds per job, default 30] [--in-process]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NODEPILOT, PilotSampler, start_job_server

from bench.harness import intervals, sleep_job


def run(n_jobs: int, seconds: float, extra: list[str]) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="np-multislot-"))
    try:
        for sub in ("jobs", "work", "se"):
            (base / sub).mkdir()
        ids = [3000 + i for i in range(n_jobs)]
        for panda_id in ids:
            (base / "jobs" / f"{panda_id}.json").write_text(json.dumps(sleep_job(panda_id, seconds, ram_mb=10)))
        server = start_job_server(base / "jobs", base)
        try:
            t0 = time.time()
            proc = subprocess.Popen([*NODEPILOT, "start", "--queue", "BENCH", "--server", server.url, "--workdir",
                                     str(base / "work"), "--se-dir", str(base / "se"), "--slots", str(n_jobs), *extra],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sampler = PilotSampler(proc.pid, base / "work")
            sampler.start()
            proc.wait(seconds * 4 + 120)
            t1 = time.time()
            sampler.stop.set()
            sampler.join()
        finally:
            server.process.terminate()
            server.process.wait(10)
        spans = intervals(base / "work", ids)
        first, last = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
        all_in, first_out = max(s for s, _ in spans.values()), min(e for _, e in spans.values())
        job_seconds = sum(e - s for s, e in spans.values())
        return {"code": proc.returncode, "job_s": job_seconds, "window_s": last - first, "life_s": t1 - t0,
                "cpu_window": sampler.cpu_between(first, last), "cpu_life": sampler.cpu_series[-1][1],
                "steady_s": first_out - all_in, "cpu_steady": sampler.cpu_between(all_in, first_out),
                "start_spread_s": max(s for s, _ in spans.values()) - first, "pss_mb": sampler.peak_kb / 1024,
                "redis_pss_mb": sampler.redis_peak_kb / 1024}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    extra = [a for a in sys.argv[1:] if a == "--in-process"]
    seconds = float(args[0]) if args else 30.0
    one, many = run(1, seconds, extra), run(16, seconds, extra)
    mode = "in-process" if extra else "forked services"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    over = "16 slots oversubscribe it" if (cores or 0) < 16 else "16 slots fit"
    print(f"{mode}; {seconds:g} s sleep jobs; {cores}-core machine: {over}")
    print(f"{'':44s}{'1 job':>10s}{'16 jobs':>10s}")
    for label, key, fmt in (("exit code", "code", "{:10.0f}"), ("payload wall time, all jobs (s)", "job_s", "{:10.1f}"),
                            ("first start -> last end (s)", "window_s", "{:10.1f}"),
                            ("spread of the 16 starts (s)", "start_spread_s", "{:10.2f}"),
                            ("pilot CPU while payloads ran (s)", "cpu_window", "{:10.3f}"),
                            ("all running: last start -> first end (s)", "steady_s", "{:10.1f}"),
                            ("pilot CPU while all ran (s)", "cpu_steady", "{:10.3f}"),
                            ("pilot CPU, whole life (s)", "cpu_life", "{:10.3f}"),
                            ("peak PSS of the pilot, without Redis (MB)", "pss_mb", "{:10.1f}"),
                            ("peak PSS of Redis (MB)", "redis_pss_mb", "{:10.1f}")):
        print(f"{label:44s}{fmt.format(one[key])}{fmt.format(many[key])}")
    per_one, per_many = one["cpu_window"] / one["job_s"], many["cpu_window"] / many["job_s"]
    life_one, life_many = one["cpu_life"] / one["job_s"], many["cpu_life"] / many["job_s"]
    steady_one, steady_many = (one["cpu_steady"] / one["steady_s"],
                               many["cpu_steady"] / (16 * many["steady_s"]) if many["steady_s"] > 0 else float("nan"))
    print(f"{'pilot CPU s per job-second, all running':44s}{steady_one:10.5f}{steady_many:10.5f}")
    print(f"{'pilot CPU s per job-second, while running':44s}{per_one:10.5f}{per_many:10.5f}")
    print(f"{'pilot CPU s per job-second, whole life':44s}{life_one:10.5f}{life_many:10.5f}")
    running = per_many / per_one if per_one else float("nan")
    steady = steady_many / steady_one if steady_one else float("nan")
    print(f"ratio 16 jobs / 1 job, per job-second: all running {steady:.3f}, while running {running:.3f}, "
          f"whole life {life_many / life_one:.3f}")


if __name__ == "__main__":
    main()
