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
