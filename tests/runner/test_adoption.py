"""A runner killed while its payload runs: the payload is never started twice, and its successor
learns how it ended from the shim, whether it still ran, had ended meanwhile, or lost its shim too."""

from __future__ import annotations

import psutil

from nodepilot.errors import ErrorCode
from services.runner.execute import status_file
from tests.conftest import read_events, running_service
from tests.runner.test_runner_service import all_events, finished, run, wait_all_acked, workdir
from tests.waiting import wait_until

WAIT_FOR_GO = "started >> count.txt; while [ ! -e go ]; do sleep 0.05; done; exit 4"


def kill_runner_mid_payload(rds, pilot_config, job_id: int) -> int:
    """Start the payload, SIGKILL the runner; returns the shim's pid (the payload's group)."""
    with running_service("runner", pilot_config) as proc:
        run(rds, pilot_config, job_id, "echo", WAIT_FOR_GO)
        pid = read_events(rds, job_id, {"payload_started"}, timeout=30)[-1]["pid"]
        # started is not yet running: on a loaded machine the shell may not have written its mark yet
        wait_until(lambda: (workdir(pilot_config, job_id) / "count.txt").exists(), 10, "the payload's first line")
        proc.kill()
        proc.wait(10)
    return pid


def test_payload_that_ended_while_no_runner_watched_is_reported(rds, pilot_config):
    shim = kill_runner_mid_payload(rds, pilot_config, 130)
    (workdir(pilot_config, 130) / "go").touch()
    wait_until(lambda: not psutil.pid_exists(shim) or psutil.Process(shim).status() == psutil.STATUS_ZOMBIE,
               10, "the payload ended")
    assert status_file(pilot_config.run_dir, 130, "130:0:run").read_text().strip() == "4"
    with running_service("runner", pilot_config):
        event = finished(rds, 130, timeout=30)
        wait_all_acked(rds)
    assert event["exit_code"] == 4 and event["pilot_error_code"] == ErrorCode.PAYLOAD_FAILED, event
    assert [e["type"] for e in all_events(rds, 130)].count("payload_started") == 1
    assert not status_file(pilot_config.run_dir, 130, "130:0:run").exists()


def test_payload_that_lost_its_shim_too_is_killed_and_reported_lost(rds, pilot_config):
    shim = kill_runner_mid_payload(rds, pilot_config, 131)
    inside = psutil.Process(shim).children(recursive=True)
    psutil.Process(shim).kill()  # nobody can say how the payload ends now
    with running_service("runner", pilot_config):
        event = finished(rds, 131, timeout=30)
    assert event["pilot_error_code"] == ErrorCode.PILOT_EXCEPTION and "result was lost" in event["pilot_error_diag"]
    assert (workdir(pilot_config, 131) / "count.txt").read_text() == "started\n"
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in inside), 10,
               "the payload's processes gone")
