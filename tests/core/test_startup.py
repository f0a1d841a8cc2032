"""The pilot's start-up: a service says it is healthy without being asked, the launcher waits for that
word (or a death) instead of polling, and the Redis clients skip redis-py's per-connection metadata read."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis

from nodepilot import bus
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.http import async_uds_client
from nodepilot.launcher import Launcher
from nodepilot.service import Service


class Probe(Service):
    name = "probe"


async def _serve_until_ready(config: PilotConfig) -> tuple[str, int]:
    """Serve a Probe service; once its word arrives, what it wrote and what its /healthz says then."""
    read_fd, write_fd = os.pipe()
    service = Probe(config)
    service.ready_fd = write_fd
    task = asyncio.create_task(service.serve())
    try:
        word = await asyncio.wait_for(asyncio.to_thread(os.read, read_fd, 100), 20)
        async with async_uds_client(config.socket_path("probe"), timeout=5) as client:
            status = (await client.get("/healthz")).status_code
    finally:
        service.stopping.set()
        await asyncio.wait_for(task, 10)
        os.close(read_fd)
        os.close(write_fd)
    return word.decode(), status


def test_a_service_says_it_is_healthy_once_it_serves_and_redis_answers(pilot_config: PilotConfig):
    word, status = asyncio.run(_serve_until_ready(pilot_config))
    assert word == "probe\n"
    assert status == 200  # the word means what /healthz says


def _say(fd: int, name: str) -> None:
    os.write(fd, f"{name}\n".encode())
    time.sleep(30)  # healthy until the test ends it


def _silent() -> None:
    time.sleep(30)


def _launcher_with(config: PilotConfig, silent: str = "") -> Launcher:
    """Children standing in for the services: each says its name (``silent`` says nothing); the monitor
    has ended already, as a pilot that found no job."""
    launcher = Launcher(config)
    for name in SERVICES:
        if name == "monitor":
            proc = launcher.ctx.Process(target=sys.exit, args=(0,))
        elif name == silent:
            proc = launcher.ctx.Process(target=_silent)
        else:
            proc = launcher.ctx.Process(target=_say, args=(launcher._ready_w, name))
        proc.start()
        launcher.procs[name] = proc
    return launcher


def _end(launcher: Launcher) -> None:
    for proc in launcher.procs.values():
        proc.kill()
        proc.join(5)


def test_the_launcher_wakes_on_the_services_word(pilot_config: PilotConfig):
    launcher = _launcher_with(pilot_config)
    try:
        t0 = time.monotonic()
        launcher.wait_healthy(timeout=20)
        assert time.monotonic() - t0 < 5
    finally:
        _end(launcher)


def test_a_service_that_never_says_it_is_healthy_ends_the_start_up(pilot_config: PilotConfig):
    launcher = _launcher_with(pilot_config, silent="runner")  # started with the pilot (the others on demand)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"not healthy within 1 s: runner$"):
            launcher.wait_healthy(timeout=1)
        assert 0.9 < time.monotonic() - t0 < 5
    finally:
        _end(launcher)


def test_a_redis_connection_names_its_version_without_reading_package_metadata(redis_url: str,
                                                                               monkeypatch: pytest.MonkeyPatch):
    def no_read(name: str) -> str:
        raise AssertionError(f"package metadata of {name} read for a new connection")

    monkeypatch.setattr("redis.utils.metadata.version", no_read)

    async def ping() -> None:
        r = bus.connect(redis_url)
        try:
            assert await r.ping()
        finally:
            await r.aclose()

    asyncio.run(ping())
    assert bus.connect(redis_url).connection_pool.connection_kwargs["driver_info"].lib_version == redis.__version__


def test_httpx_works_without_its_command_line_client():
    code = ("import nodepilot, sys, httpx; assert 'rich' not in sys.modules and 'pygments' not in sys.modules; "
            "assert httpx.Client and httpx.AsyncClient")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_command_line_is_read_beside_the_import_of_the_launcher_and_the_monitor_only():
    """With services as processes the pilot imports the launcher and the monitor while its command line is
    read; the other services import their own modules once forked. In-process: only the common libraries."""
    other = "('services.runner', 'services.stager', 'services.eventclient')"
    code = ("import sys; from nodepilot import boot; boot.preload(in_process={}); "
            "assert not any(m.startswith(" + other + ") for m in sys.modules), 'another service imported'; "
            "print('nodepilot.launcher' in sys.modules, 'services.monitor.service' in sys.modules)")
    for in_process, expected in ((False, "True True"), (True, "False False")):
        done = subprocess.run([sys.executable, "-c", code.format(in_process)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected.split()


def test_the_launcher_builds_the_monitor_and_each_other_service_builds_itself(pilot_config: PilotConfig,
                                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NODEPILOT_LAUNCHED_AT", str(time.time()))  # (prepare sets it: not left to later tests)
    pilot_config.server = "http://127.0.0.1:9"  # the monitor is built, not run
    launcher = Launcher(pilot_config)
    launcher.prepare()
    assert set(launcher.instances) == {"monitor"}
    launcher.procs["monitor"] = launcher.ctx.Process(target=sys.exit, args=(0,))  # a pilot that found no job
    launcher.procs["monitor"].start()
    launcher.spawn("runner")
    try:
        launcher.wait_healthy(timeout=20)  # the runner, built in its own process, said it serves
        assert launcher.procs["runner"].is_alive()
        assert set(launcher.instances) == {"monitor"}
    finally:
        _end(launcher)
