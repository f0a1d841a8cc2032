"""A payload whose grandchild escapes by a double fork before any sample: the cgroup v2 subtree
still holds it, so the kill (and the end of the payload) reaches it. A real runner and payloads."""

from __future__ import annotations

import random

import pytest

from services.runner.cgroup import delegated_base
from tests.conftest import running_service
from tests.runner.test_runner_service import finished, kill, processes_with, run, workdir
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(delegated_base() is None, reason="no delegated cgroup v2 on this machine")


def escape(marker: str) -> str:
    """A double fork: the middle process ends at once, so the escapee's parent is init from the start."""
    return f"( setsid sleep {marker} & ) ; "


def test_escaped_double_fork_is_killed_with_the_payload(rds, pilot_config):
    marker = f"312.{random.randrange(10**6):06d}"
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 120, "sleep", "60", setup=escape(marker), sample_interval=30)
        # the escapee itself, not the sandbox's shim whose command line also names the marker
        escapees = wait_until(lambda: [p for p in processes_with(marker) if p.info["cmdline"][:1] == ["sleep"]],
                              10, "the escapee running")
        # out of the payload's process tree, still in its cgroup (what the kill reaches)
        for escapee in escapees:
            assert "nodepilot-120-" in cgroup_of(escapee.pid), cgroup_of(escapee.pid)
        kill(rds, 120, grace=0.5)
        finished(rds, 120, timeout=15)
        wait_until(lambda: not processes_with(marker), 5, "the escapee gone")


def test_escapee_of_a_payload_that_ends_by_itself_is_killed(rds, pilot_config):
    marker = f"313.{random.randrange(10**6):06d}"
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 121, "true", setup=escape(marker) + "sleep 0.3", sample_interval=30)
        event = finished(rds, 121, timeout=15)
        assert event["exit_code"] == 0
        wait_until(lambda: not processes_with(marker), 5, "the escapee gone")


def test_the_payload_cgroup_is_removed_after_the_job(rds, pilot_config):
    base = delegated_base()
    go = workdir(pilot_config, 122) / "go"
    with running_service("runner", pilot_config):
        run(rds, pilot_config, 122, "sh", "-c 'while [ ! -e go ]; do sleep 0.05; done'", sample_interval=30)
        cgroups = wait_until(lambda: list(base.glob("nodepilot-122-*")), 10, "the payload's cgroup")
        wait_until(lambda: (cgroups[0] / "cgroup.procs").read_text().split(), 10, "the payload in its cgroup")
        go.touch()
        finished(rds, 122, timeout=15)
        wait_until(lambda: not list(base.glob("nodepilot-122-*")), 5, "the cgroup removed")


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


def test_a_stopped_runner_leaves_no_payload_and_no_cgroup(rds, pilot_config):
    """SIGINT or SIGTERM of the runner while a payload that ignores SIGTERM runs: the payload is killed,
    and its cgroup is gone by the time the runner has exited (not minutes later)."""
    import os
    import signal
    import time

    from services.runner.cgroup import PREFIX

    base = delegated_base()
    leftover = base / f"{PREFIX}999-leftover"  # an empty one of a runner killed earlier
    leftover.mkdir()
    os.utime(leftover, (time.time() - 3600,) * 2)
    young = base / f"{PREFIX}998-young"  # maybe another runner's, about to be joined: left alone
    young.mkdir()
    marker = f"314.{random.randrange(10**6):06d}"
    for signum, job_id in ((signal.SIGINT, 123), (signal.SIGTERM, 124)):
        with running_service("runner", pilot_config) as proc:
            wait_until(lambda: not leftover.exists(), 5, "the empty leftover cgroup removed at start")
            run(rds, pilot_config, job_id, "bash", f"-c 'trap \"\" TERM; sleep {marker}'", sample_interval=30)
            wait_until(lambda j=job_id: list(base.glob(f"{PREFIX}{j}-*")) and processes_with(marker), 10,
                       "the payload running in its cgroup")
            t0 = time.monotonic()
            proc.send_signal(signum)
            proc.wait(15)
            stopped_s = time.monotonic() - t0
            assert not list(base.glob(f"{PREFIX}{job_id}-*")), f"cgroup left after {signum!r}"
            assert not processes_with(marker)
            assert stopped_s < 10  # within the launcher's grace (it SIGKILLs a service after 10 s)
            assert finished(rds, job_id, timeout=1)["pilot_error_code"]  # reported as stopped
    assert young.is_dir()
    young.rmdir()
