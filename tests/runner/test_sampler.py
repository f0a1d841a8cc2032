"""The runner samples its payload's whole process tree: a real runner, payloads and Redis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

from nodepilot.usage import USAGE_FILE, decode_usage, usage_key
from services.runner.request import BadRequest, parse_run
from services.runner.sampler import ProcessTree, Sample, UsageSummary, summarize
from tests.conftest import running_service
from tests.runner.test_runner_service import finished, run, workdir
from tests.waiting import wait_until

PY = sys.executable


@pytest.fixture(autouse=True)
def plain_payloads(monkeypatch):
    """These payloads run the test's Python and report their own pids to compare with the host's: no
    sandbox (its own pid namespace and mounts would hide both)."""
    monkeypatch.setenv("NODEPILOT_ISOLATION", "none")
INTERVAL = 0.2
SAMPLE_FIELDS = {"time", "rss_kb", "pss_kb", "vmem_kb", "swap_kb", "cpu_s", "rbytes", "wbytes", "nprocs", "nthreads",
                 "gpu_mem_kb", "gpu_util_pct"}

# the grandchild: leaves the session (setsid) and its parent ends, so the payload's rusage never
# counts it; it burns CPU, says so, and lingers long enough to be sampled once more
BURN = """
import os, sys, time
from pathlib import Path
Path("grandchild.pid").write_text(str(os.getpid()))
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
Path("burnt").touch()
time.sleep(1.0)
"""


def usage(rds, job_id: int) -> dict:
    return decode_usage(rds.hgetall(usage_key(job_id)))


def samples(wd: Path) -> list[dict]:
    return json.loads((wd / USAGE_FILE).read_text())["samples"]


def test_memory_of_the_payload_is_sampled(rds, pilot_config):
    job_id = 201
    script = "import time; b = b'x' * (60 << 20); time.sleep(2.0)"
    with running_service("runner", pilot_config):
        run(rds, pilot_config, job_id, PY, f'-c "{script}"', sample_interval=INTERVAL)
        event = finished(rds, job_id)
    wd = workdir(pilot_config, job_id)
    series = samples(wd)
    assert event["pilot_error_code"] == 0, event["pilot_error_diag"]
    assert len(series) >= 5 and all(set(s) == SAMPLE_FIELDS for s in series)
    assert [s["time"] for s in series] == sorted(s["time"] for s in series)
    assert max(s["pss_kb"] for s in series) > 40_000
    assert event["max_pss_kb"] > 40_000 and event["max_rss_kb"] > 40_000 and event["max_vmem_kb"] > 40_000
    assert 0 < event["avg_pss_kb"] <= event["max_pss_kb"] and 0 < event["avg_rss_kb"] <= event["max_rss_kb"]
    assert event["max_swap_kb"] >= 0 and event["avg_swap_kb"] >= 0
    assert event["tot_rbytes"] >= 0 and event["tot_wbytes"] >= 0
    assert event["rate_wbytes"] == round(event["tot_wbytes"] / event["wall_seconds"])
    latest = usage(rds, job_id)
    summary = set(UsageSummary().to_dict())  # the figures so far, for the monitor's heartbeats
    assert set(latest) == SAMPLE_FIELDS | {"pids"} | summary and isinstance(latest["pids"], list)
    assert 40_000 < latest["max_pss_kb"] <= event["max_pss_kb"] and latest["cpu_seconds"] <= event["cpu_seconds"]
    assert rds.ttl(usage_key(job_id)) > 0


def test_a_grandchild_that_left_the_session_is_followed(rds, pilot_config):
    job_id = 202
    wd = workdir(pilot_config, job_id)
    (wd / "burn.py").write_text(BURN)
    # the middle process (a subshell) starts the grandchild in a new session and ends; the payload
    # waits for the grandchild's CPU to be burnt, then for a few more samples
    setup = (f"( setsid {PY} burn.py 2.0 & echo $BASHPID > middle.pid; sleep 0.6 )\n"
             "for i in $(seq 200); do [ -e burnt ] && break; sleep 0.05; done\nsleep 0.6")
    with running_service("runner", pilot_config):
        run(rds, pilot_config, job_id, "true", setup=setup, sample_interval=INTERVAL)
        wait_until(lambda: (wd / "grandchild.pid").exists() and (wd / "middle.pid").exists(), 10, "both started")
        grandchild, middle = int((wd / "grandchild.pid").read_text()), int((wd / "middle.pid").read_text())

        def orphan_sampled() -> bool:  # the middle process ended, and the grandchild is still in the tree
            return not psutil.pid_exists(middle) and grandchild in usage(rds, job_id).get("pids", [])

        wait_until(orphan_sampled, 10, "the orphaned grandchild sampled")
        event = finished(rds, job_id)
    series = samples(wd)
    assert event["pilot_error_code"] == 0, event["pilot_error_diag"]
    assert max(s["nprocs"] for s in series) >= 3
    cpu = [s["cpu_s"] for s in series]
    assert cpu == sorted(cpu), "the tree's CPU time never goes down"
    assert event["cpu_seconds"] >= 1.8  # the grandchild's 2 s: the payload's rusage never saw them


def test_tree_outlives_ended_processes(tmp_path):
    """In-process: a child's CPU stays counted after it ended and was reaped."""
    proc = psutil.Popen([PY, "-c", "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass"])
    tree = ProcessTree(proc.pid)
    first = tree.sample()
    assert first.nprocs == 1 and first.pids == [proc.pid] and first.rss_kb > 0
    seen = first
    while proc.poll() is None:  # bounded: the child ends after 0.3 s of CPU
        seen = tree.sample()
    proc.wait(10)
    after = tree.sample()
    assert after.nprocs == 0 and after.cpu_s >= seen.cpu_s > 0


def test_summary_and_interval():
    series = [Sample(0.0, rss_kb=10, pss_kb=8, cpu_s=1.0, rbytes=100, wbytes=40, nprocs=2),
              Sample(1.0, rss_kb=30, pss_kb=20, cpu_s=2.5, rbytes=300, wbytes=80, nprocs=3),
              Sample(2.0, cpu_s=2.5, rbytes=300, wbytes=80)]  # after the end: no live process
    summary = summarize(series, rusage_cpu_s=2.0, rusage_maxrss_kb=25, wall_s=4.0)
    assert (summary.cpu_seconds, summary.max_rss_kb, summary.max_pss_kb) == (2.5, 30, 20)
    assert summarize(series, rusage_cpu_s=9.0, rusage_maxrss_kb=99).cpu_seconds == 9.0
    assert (summary.avg_rss_kb, summary.avg_pss_kb) == (20, 14)
    assert (summary.tot_rbytes, summary.rate_rbytes, summary.tot_wbytes, summary.rate_wbytes) == (300, 75, 80, 20)
    assert summarize([], 3.0, 7, 0.0).to_dict() == {**summarize([]).to_dict(), "cpu_seconds": 3.0, "max_rss_kb": 7}
    base = {"request_id": "r", "workdir": "/", "command": "true"}
    assert parse_run(base).sample_interval == 10.0
    assert parse_run({**base, "sample_interval": 0.5}).sample_interval == 0.5
    assert parse_run({**base, "sample_interval": 0.001}).sample_interval == 0.1
    for bad in ("5", True, -1, float("nan")):
        with pytest.raises(BadRequest, match="sample_interval"):
            parse_run({**base, "sample_interval": bad})
