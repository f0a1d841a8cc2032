"""A real Docker engine and compose for the tests: started by scripts/docker-engine.sh (and stopped by
it), the images built locally (no registry needed), compose's commands and the containers' state."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
BASE_IMAGE = "nodepilot-base:bookworm"
IMAGE = "nodepilot:latest"
NO_ENGINE = 3  # docker-engine.sh: none can be started here


def cli() -> str:
    """The engine's own CLI: Debian's, which scripts/docker-engine.sh may install only once the tests run (a
    newer CLI found first on PATH, without its buildx plugin, cannot build with BuildKit)."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float, check: bool = True) -> str:
    done = subprocess.run(list(argv), env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


@contextlib.contextmanager
def engine(state: Path) -> Iterator[dict[str, str]]:
    """The environment (DOCKER_HOST) of an engine that answers; stops it at the end if it started it.
    Skips where none can be started (not root and none running)."""
    start = subprocess.run(["bash", str(SCRIPTS / "docker-engine.sh"), "start", str(state)], capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
    if start.returncode == NO_ENGINE:
        pytest.skip(f"no container engine can be started here: {start.stderr.strip()}")
    assert start.returncode == 0, start.stderr
    host = next(line.split("=", 1)[1] for line in start.stdout.splitlines() if line.startswith("DOCKER_HOST="))
    try:
        yield {**os.environ, "DOCKER_HOST": host}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "docker-engine.sh"), "stop", str(state)], timeout=180,
                       stdin=subprocess.DEVNULL)


def build_images(env: Mapping[str, str]) -> None:
    """The base image (debootstrap, once per engine) and the project's image, with this machine's pip
    settings in the build context for the build only."""
    run(["bash", str(SCRIPTS / "base-image.sh"), BASE_IMAGE], env, timeout=400)
    config = ROOT / "docker" / "build-config"
    run(["python3", str(SCRIPTS / "build_config.py"), str(config)], env, timeout=30)
    try:
        run([cli(), "build", "--quiet", "-f", "docker/Dockerfile", "--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE,
             "."], {**env, "DOCKER_BUILDKIT": "1"}, timeout=600)
    finally:
        run(["python3", str(SCRIPTS / "build_config.py"), "--clean", str(config)], env, timeout=30)


def compose_command(env: Mapping[str, str], project: str) -> list[str]:
    """Compose v2 runs compose.yaml as it is; Debian's docker-compose 1.29 with its env file."""
    if subprocess.run([cli(), "compose", "version"], env=dict(env), capture_output=True, timeout=30).returncode == 0:
        return [cli(), "compose", "-p", project]
    compose = shutil.which("docker-compose")
    assert compose, "neither `docker compose` nor docker-compose is installed"
    return [compose, "--env-file", "docker/compose-1.29.env", "-p", project]


def inspect(env: Mapping[str, str], container: str) -> dict:
    return json.loads(run([cli(), "inspect", container], env, timeout=30))[0]


def wait_for(what: str, check, timeout: float, interval: float = 0.5):
    """Bounded wait until ``check()`` returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def project_leftovers(env: Mapping[str, str], project: str) -> dict[str, list[str]]:
    """What of the compose project the engine still has: containers, networks, volumes."""
    label = f"label=com.docker.compose.project={project}"
    found = {
        "containers": run([cli(), "ps", "-aq", "--filter", label], env, timeout=30).split(),
        "networks": run([cli(), "network", "ls", "-q", "--filter", label], env, timeout=30).split(),
        "volumes": run([cli(), "volume", "ls", "-q", "--filter", label], env, timeout=30).split(),
    }
    return {k: v for k, v in found.items() if v}
