"""A multi-slot pilot: several jobs at once, packed by cores, asking only for what fits, stopped together."""

from __future__ import annotations

import signal
import time

import psutil

from nodepilot import bus
from services.monitor.pilot import Pilot
from services.monitor.timebudget import TimeBudget
from tests.e2e.conftest import add_jobs, final_update, run_pilot
from tests.e2e.test_signals_and_healing import start_pilot
from tests.hpc.helpers import acquire_params, intervals, max_overlap, sleep_job
from tests.waiting import wait_until


def test_two_slots_run_four_jobs_at_most_two_at_once_and_respect_core_count(site, job_server):
    jobs = [sleep_job(2001, 2), sleep_job(2002, 2), sleep_job(2003, 1, cores=2), sleep_job(2004, 1)]
    add_jobs(site, *jobs)
    result = run_pilot(site, job_server.url, "--slots", "2", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    server_jobs = job_server.jobs()
    assert all(final_update(server_jobs[j["PandaID"]])["job_status"] == "finished" for j in jobs)
    spans = intervals(site / "work", [j["PandaID"] for j in jobs])
    assert max_overlap(list(spans.values())) == 2
    single = [s for pid, s in spans.items() if pid != 2003]
    start, end = spans[2003]
    assert all(e <= start or s >= end for s, e in single), f"the 2-core job shared the 2 cores: {spans}"
    # the second job was asked for with one core and the first job's memory taken
    params = acquire_params(site / "server.sqlite")
    total_mb = psutil.virtual_memory().total >> 20
    first, second = params["00_2001.json#0"], params["01_2002.json#0"]
    assert first["memory"] == total_mb and "resource_type" not in first
    assert second["memory"] == total_mb - 100 and second["resource_type"] == "SCORE"


def test_a_signal_stops_every_running_job(site, job_server):
    add_jobs(site, sleep_job(2101, 60), sleep_job(2102, 60))
    pilot = start_pilot(site, job_server.url, "--slots", "2", "--in-process")
    work = site / "work"
    try:
        wait_until(lambda: all((work / f"PanDA_Pilot-{i}" / "t_start").exists() for i in (2101, 2102)), 20,
                   "both payloads running")
        pilot.send_signal(signal.SIGTERM)
        err, _ = pilot.communicate(timeout=30)
    finally:
        if pilot.poll() is None:
            pilot.kill()
    assert pilot.returncode == 128 + signal.SIGTERM, err[-3000:]
    for panda_id in (2101, 2102):
        update = final_update(job_server.jobs()[panda_id])
        assert update["job_status"] == "failed" and update["pilot_error_code"] == 1201, update


def test_near_the_end_of_the_slot_no_job_is_asked_for(pilot_config):
    pilot_config.server, pilot_config.slots = "http://127.0.0.1:9", "2"
    pilot = Pilot(pilot_config, bus.connect(pilot_config.redis_url))
    assert pilot.ledger.max_jobs == 2 and pilot._may_acquire()
    pilot.budget = TimeBudget(end=time.time() + 500, warn_s=600, stop_s=300)  # a new job would be warned at once
    assert not pilot._may_acquire()
