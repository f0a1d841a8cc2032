"""Services on demand (nodepilot/demand.py): the monitor's needs reach the launcher through a pipe, the launcher
starts what is needed and retires what is not, and a retiring service ends only once it holds no work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import pytest
import redis

from nodepilot import bus, demand
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.demand import RETIRE, DemandLedger
from nodepilot.launcher import Launcher
from nodepilot.service import Service
from nodepilot.supervision import RestartPolicy


def test_the_ledger_counts_overlapping_needs_and_names_what_is_no_longer_needed():
    ledger = DemandLedger()
    assert ledger.feed(b"+stager\n+stager\n-stager\n") == set()  # two jobs' steps overlap: one still needs it
    assert ledger.wanted("stager")
    assert ledger.feed(b"-stager\n+stager\n") == set()  # released and needed again in one read: kept
    assert ledger.feed(b"-stager\n") == {"stager"}
    assert not ledger.wanted("stager")
    assert ledger.feed(b"-stager\n") == set()  # never below zero
    assert ledger.feed(b"+event") == set() and not ledger.wanted("eventclient")  # half a line: kept for later
    ledger.feed(b"client\n+monitor\nnonsense\n")  # the monitor is never on demand: ignored, as is noise
    assert ledger.wanted("eventclient") and not ledger.wanted("monitor")
    ledger.forget()
    assert not ledger.wanted("eventclient")


def test_need_tells_the_pipe_in_one_write_and_nothing_without_one():
    read_fd, write_fd = os.pipe()
    try:
        demand.listen(write_fd)
        with demand.need("eventclient", "stager"):
            assert os.read(read_fd, 100) == b"+eventclient\n+stager\n"
        assert os.read(read_fd, 100) == b"-eventclient\n-stager\n"
        demand.listen(None)
        with demand.need("stager"):
            pass
        os.set_blocking(read_fd, False)
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 100)
    finally:
        demand.listen(None)
        os.close(read_fd)
        os.close(write_fd)


class Slow(Service):
    """A service whose requests wait for the test's word before they are answered."""

    name = "slow"
    stream = "slow:requests"

    def __init__(self, config: PilotConfig) -> None:
        super().__init__(config)
        self.release = asyncio.Event()
        self.started: list[str] = []

    def workers(self) -> list[Any]:
        return [self.consume_or_stop(bus.Consumer(self.redis, self.stream, "slow", "slow", self.handle))]

    async def handle(self, _entry_id: str, message: dict[str, Any]) -> None:
        self.started.append(message["n"])
        await self.release.wait()
        await bus.emit(self.redis, 1, self.name, "answered", n=message["n"])


async def _until(condition: Any, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):  # bounded: the test fails with ``what`` rather than hangs
        while not condition():
            await asyncio.sleep(0.01)


def test_a_retiring_service_ends_once_the_request_in_hand_is_answered(pilot_config: PilotConfig, rds: redis.Redis):
    async def scenario() -> None:
        service = Slow(pilot_config)
        task = asyncio.create_task(service.serve())
        await bus.publish(service.redis, Slow.stream, {"n": "a"})
        await _until(lambda: service.started == ["a"], "the request in hand")
        service.retire()
        await asyncio.sleep(0.2)
        assert not task.done()  # it holds work: it goes on
        service.release.set()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())
    assert [bus.decode(f)["n"] for _id, f in rds.xrange(bus.job_events(1))] == ["a"]
    assert rds.xpending(Slow.stream, "slow")["pending"] == 0  # answered and acknowledged: never done twice


def test_an_idle_service_retires_at_once(pilot_config: PilotConfig):
    async def scenario() -> None:
        service = Slow(pilot_config)
        task = asyncio.create_task(service.serve())
        await _until(lambda: pilot_config.socket_path("slow").exists(), "the service serving")
        t0 = time.monotonic()
        service.retire()
        assert await asyncio.wait_for(task, 10) == 0
        assert time.monotonic() - t0 < 1.0  # no fixed pause on the way out (nodepilot/service.py QuietServer)

    asyncio.run(scenario())
    assert not pilot_config.socket_path("slow").exists()


def _monitor(fd: int) -> None:
    """Stands in for the monitor: needs the stager for two steps with a pause between them, then ends."""
    demand.listen(fd)
    with demand.need("stager"):
        time.sleep(0.3)
    time.sleep(0.5)
    with demand.need("stager"):
        time.sleep(0.3)
    sys.exit(0)


def _stager() -> None:
    """Stands in for a service: retires (exit 0) when the launcher asks."""
    signal.signal(RETIRE, lambda *_: sys.exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (RETIRE,))
    time.sleep(30)


def _with_stand_ins(launcher: Launcher, monitor_main: Any, stager_main: Any, *stager_args: Any,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    """The launcher's monitor (started now) and stagers (started as the launcher asks, listed) stood in for."""
    stagers: list[Any] = []

    def spawn(name: str) -> None:
        assert name == "stager"
        proc = launcher.ctx.Process(target=stager_main, args=stager_args)
        proc.start()
        launcher.procs[name] = proc
        stagers.append(proc)

    monkeypatch.setattr(launcher, "spawn", spawn)
    monitor = launcher.ctx.Process(target=monitor_main, args=(launcher._demand_w,))
    monitor.start()
    launcher.procs["monitor"] = monitor
    return monitor, stagers


def test_the_launcher_starts_a_needed_service_and_retires_it_when_it_is_not(pilot_config: PilotConfig,
                                                                          monkeypatch: pytest.MonkeyPatch):
    launcher = Launcher(pilot_config)
    monitor, stagers = _with_stand_ins(launcher, _monitor, _stager, monkeypatch=monkeypatch)
    try:
        assert launcher.supervise() == 0  # the monitor's exit code
        assert len(stagers) == 2  # started for each step: retired in the pause between them
        assert stagers[0].exitcode == 0
        stagers[-1].join(10)
        assert stagers[-1].exitcode == 0  # retired after the second step too
        assert launcher.policy.restarts["stager"] == 0  # a retirement is not a death
    finally:
        for proc in (monitor, *stagers):
            proc.kill()
            proc.join(5)


def test_a_closed_consumer_leaves_what_it_reads_to_the_next_instance(redis_url: str, rds: redis.Redis):
    """A service that decided to retire reads on until it is stopped: what it reads then is not started
    (it would be cut short), but served by the next instance, which reads its own pending entries first."""
    handled: list[int] = []

    async def handle(_entry_id: str, message: dict[str, Any]) -> None:
        handled.append(message["n"])

    async def scenario() -> None:
        r = bus.connect(redis_url)
        try:
            await bus.ensure_group(r, "c:requests", "c")  # before the test looks at it
            first = bus.Consumer(r, "c:requests", "c", "c", handle, block_ms=100)
            first.closed = True
            task = asyncio.create_task(first.run())
            await bus.publish(r, "c:requests", {"n": 1})
            await _until(lambda: rds.xpending("c:requests", "c")["pending"] == 1, "the entry read")
            task.cancel()
            await asyncio.wait([task], timeout=5)
            assert handled == []
            second = bus.Consumer(r, "c:requests", "c", "c", handle, block_ms=100)
            task = asyncio.create_task(second.run())
            await _until(lambda: handled == [1], "the entry served by the next instance")
            task.cancel()
            await asyncio.wait([task], timeout=5)
        finally:
            await r.aclose()

    asyncio.run(scenario())
    assert rds.xpending("c:requests", "c")["pending"] == 0



def _needs_the_stager_until_stopped(fd: int) -> None:
    """Stands in for the monitor: needs the stager until a signal stops it, which takes it 3 s (a graceful stop:
    the payload killed, the log out), then ends with 143, as a signalled pilot."""

    def stop(*_: object) -> None:
        time.sleep(3)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM,))
    demand.listen(fd)
    with demand.need("stager"):
        time.sleep(60)


def test_a_needed_service_that_keeps_dying_stops_the_pilot_without_spinning(pilot_config: PilotConfig,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """A stager that dies as it starts (say its build fails) is started again a few times, then given up: the
    monitor is told to stop and the launcher returns, never starting it again nor waiting on its end for ever."""
    launcher = Launcher(pilot_config)
    launcher.policy = RestartPolicy(SERVICES, max_restarts=2, window_s=60)
    monitor, starts = _with_stand_ins(launcher, _needs_the_stager_until_stopped, sys.exit, 1, monkeypatch=monkeypatch)
    try:
        t0 = time.process_time()
        assert launcher.supervise() == 143  # the monitor's code: stopped by the launcher's SIGTERM
        assert len(starts) == 3  # the first start and two restarts
        assert "stager" not in launcher.procs
        assert time.process_time() - t0 < 1  # no busy loop on the dead stager's end during the monitor's stop
    finally:
        for proc in (monitor, *starts):
            proc.kill()
            proc.join(5)
