"""`docker compose up` for real, as a cloud site runs it: a Docker engine started for the test (and
stopped after it), the base image made locally (no registry), the project's image built with this
machine's pip settings, the stack up; the four demo jobs end as they should, every container is
healthy, a Redis killed from outside comes back with its data and the services are healthy again,
and ``down`` leaves nothing of the project behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.docker import engine as docker
from tests.e2e.conftest import final_update
from tests.operators.helpers import free_port

PROJECT = "nodepilot-check"
EXPECTED = {1001: ("finished", 0), 1002: ("finished", 0), 1003: ("failed", 1305), 1004: ("failed", 1008)}
LONG_RUNNING = ("redis", "jobserver", "runner", "stager", "eventclient")


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory):
    state = os.environ.get("NODEPILOT_TEST_DAEMONS")  # make test's: its exit trap stops the engine too
    with docker.engine((Path(state) if state else tmp_path_factory.mktemp("docker")) / "docker") as env:
        yield env


def health(env, container: str) -> str:
    state = docker.inspect(env, container)["State"]
    return state.get("Health", {}).get("Status", "") if state["Running"] else "not running"


@pytest.mark.timeout(900)
def test_compose_up_runs_the_demo_survives_a_redis_crash_and_down_leaves_nothing(engine_env):
    env = engine_env
    t0 = time.monotonic()
    docker.build_images(env)
    built = time.monotonic()
    port = free_port()
    env = {**env, "NODEPILOT_PORT": str(port), "NODEPILOT_REDIS_IMAGE": docker.BASE_IMAGE}
    compose = docker.compose_command(env, PROJECT)
    try:
        docker.run([*compose, "up", "-d", "--no-build"], env, timeout=300)
        ids = {name: docker.run([*compose, "ps", "-q", name], env, timeout=60).strip()
               for name in (*LONG_RUNNING, "seed", "monitor")}
        # the monitor ends when the job server has no job left; the rest stays up
        assert docker.run([docker.cli(), "wait", ids["monitor"]], env, timeout=240).strip() == "0"
        assert docker.inspect(env, ids["seed"])["State"]["ExitCode"] == 0
        jobs = {int(j["PandaID"]): j for j in httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=10).json()}
        ends = {i: (final_update(j)["job_status"], int(final_update(j).get("pilot_error_code") or 0))
                for i, j in jobs.items()}
        assert ends == EXPECTED, ends
        for name in LONG_RUNNING:
            docker.wait_for(f"{name} healthy", lambda n=name: health(env, ids[n]) == "healthy", timeout=60)
        up = time.monotonic()

        # Redis dies (SIGKILL from outside): its restart policy brings it back with its append-only file
        redis_cli = [docker.cli(), "exec", ids["redis"], "redis-cli"]
        keys = docker.run([*redis_cli, "dbsize"], env, timeout=30).strip()
        assert int(keys) > 0
        os.kill(docker.inspect(env, ids["redis"])["State"]["Pid"], signal.SIGKILL)
        docker.wait_for("redis restarted", lambda: docker.inspect(env, ids["redis"])["RestartCount"] >= 1, timeout=60)
        docker.wait_for("redis healthy again", lambda: health(env, ids["redis"]) == "healthy", timeout=60)
        assert docker.run([*redis_cli, "dbsize"], env, timeout=30).strip() == keys
        for name in ("runner", "stager", "eventclient"):  # their /healthz pings Redis through their own client
            docker.wait_for(f"{name} answers again", lambda n=name: subprocess.run(
                [docker.cli(), "exec", ids[n], "python", "/opt/nodepilot/healthcheck.py", n], env=env,
                capture_output=True, timeout=30).returncode == 0, timeout=60)
    finally:
        down = subprocess.run([*compose, "down", "-v", "--remove-orphans", "--timeout", "10"], env=env, cwd=docker.ROOT,
                              capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert docker.project_leftovers(env, PROJECT) == {}
    print(f"compose check: images {built - t0:.0f} s, up and demo {up - built:.0f} s, "
          f"total {time.monotonic() - t0:.0f} s", file=sys.stderr)
