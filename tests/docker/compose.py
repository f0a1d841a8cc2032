"""compose.yaml without a Docker engine: its variables resolved as compose does, and each container's
command, environment and health check turned into a local process, with the container's paths
(volumes, files of the image) and host names mapped to local ones."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as compose reads it, before interpolation (what the specification's schema checks)."""
    with path.open() as fh:
        return yaml.safe_load(fh)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR:-default}``, ``${VAR}``, ``$VAR`` and ``$$`` in every string, as compose resolves them."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        return env.get(name) or (match.group(2) or "")

    return VARIABLE.sub(one, value)


def image_env(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the image's last stage (``KEY=value`` pairs, continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_entrypoint(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The ENTRYPOINT of the image (exec form)."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), flags=re.MULTILINE)
    return json.loads(found[-1]) if found else []


@dataclass
class PathMap:
    """Container paths and names -> local ones: ``paths`` (longest first, whole path components),
    ``words`` (plain substrings, e.g. a host:port), ``programs`` (the first word of a command)."""

    paths: dict[str, str]
    words: dict[str, str] = field(default_factory=dict)
    programs: dict[str, list[str]] = field(default_factory=dict)

    def apply(self, text: str) -> str:
        if self.paths:  # one pass: a path just mapped is never mapped again
            sources = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
            text = re.sub(rf"(?<![\w./-])({sources})(?=/|\s|$|\")", lambda m: self.paths[m.group(1)], text)
        for source, target in self.words.items():
            text = text.replace(source, target)
        return text

    def command(self, argv: list[Any]) -> list[str]:
        words = [self.apply(str(a)) for a in argv]
        return [*self.programs.get(words[0], words[:1]), *words[1:]] if words else []


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    depends_on: dict[str, str]


def containers(doc: dict[str, Any], mapping: PathMap, overrides: Mapping[str, str],
               entrypoint: list[str]) -> dict[str, Container]:
    """Each service (but those with an image of their own, e.g. Redis) as a local process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NODEPILOT_")}
    image = {k: mapping.apply(v) for k, v in image_env().items() if k != "PATH"}
    out: dict[str, Container] = {}
    for name, svc in interpolate(doc, os.environ)["services"].items():
        if svc.get("image") != "nodepilot:latest":
            continue
        env_spec = svc.get("environment") or {}
        env = {k: mapping.apply(str(v)) for k, v in env_spec.items()}
        env.update({k: v for k, v in overrides.items() if k in env})
        argv = mapping.command([*(svc.get("entrypoint") or entrypoint), *(svc.get("command") or [])])
        test = (svc.get("healthcheck") or {}).get("test")
        health = mapping.command(test[1:]) if test and test[0] == "CMD" else None
        depends = svc.get("depends_on") or {}
        out[name] = Container(name, argv, {**base, **image, **env}, health,
                              {k: v.get("condition", "service_started") for k, v in depends.items()})
    return out


def start_order(all_: dict[str, Container]) -> list[str]:
    """Dependencies first (as compose starts them); dependencies on other images are the test's."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name not in all_:
            return
        for dep in all_[name].depends_on:
            visit(dep)
        order.append(name)

    for name in all_:
        visit(name)
    return order


def wait_healthy(container: Container, proc: subprocess.Popen, timeout: float) -> None:
    """Its own health check, run as compose runs it, until it says healthy (bounded)."""
    assert container.health, f"{container.name} has no health check"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{container.name} exited with {proc.returncode} before it was healthy")
        done = subprocess.run(container.health, env=container.env, capture_output=True, timeout=10)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{container.name} not healthy within {timeout} s: {done.stderr[-500:]!r}")
        time.sleep(0.1)

