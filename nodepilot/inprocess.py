"""``nodepilot start --in-process``: the four services as asyncio tasks of one process, for HPC compute
nodes where services may not be forked as processes of their own. The same Service classes, the same Redis
streams, each HTTP API still on its Unix socket; every signal goes to the monitor (as the launcher
forwards them), and the process ends when the monitor's main worker ends.

With ``--api relay`` the bus lives in a database of the front-end's Redis leased for this worker, so the
node runs no Redis of its own; otherwise a private Redis is embedded as by the launcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from redis.exceptions import RedisError

from nodepilot import exitcodes
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.launcher import FORWARDED, MAX_RESTARTS, STOP_GRACE
from nodepilot.panda.relay import DatabaseLease, default_worker_id
from nodepilot.redis_server import EmbeddedRedis, RedisStartError, spawn_redis
from nodepilot.service import Service

log = logging.getLogger("nodepilot.inprocess")


class InProcess:
    def __init__(self, config: PilotConfig) -> None:
        self.config = config
        self.redis: EmbeddedRedis | None = None
        self.lease: DatabaseLease | None = None
        self.instances: dict[str, Service] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}
        self.restarts = dict.fromkeys(SERVICES, 0)
        self.early: list[int] = []

    def catch_signals(self) -> None:
        """Before the loop's handlers exist: keep signals for the monitor (replayed once it serves)."""
        for signum in FORWARDED:
            signal.signal(signum, lambda signum, _frame: self.early.append(signum))

    async def prepare(self) -> None:
        config = self.config
        run = config.make_dirs()
        if config.api == "relay":
            config.worker_id = config.worker_id or default_worker_id(config.node)
            self.lease = DatabaseLease(config.relay_url, config.worker_id)
            config.redis_url = await self.lease.acquire()
        elif not config.redis_url:
            self.redis = spawn_redis(run / "redis")
            config.redis_url = self.redis.url
            await asyncio.to_thread(self.redis.wait_ready)
        config.save()
        os.environ.setdefault("NODEPILOT_LAUNCHED_AT", str(time.time()))

    def build(self, name: str) -> Service:
        from nodepilot.registry import service_class

        instance = service_class(name)(self.config)
        if name == "monitor":
            instance.early_signals = self.early  # the same list: a signal until its handlers exist is kept
        else:  # one process, one set of signal handlers: the monitor's
            instance.on_signal = self.instances["monitor"].on_signal  # type: ignore[method-assign]
        self.instances[name] = instance
        return instance

    def start(self, name: str) -> None:
        self.tasks[name] = asyncio.create_task(self.build(name).serve(), name=f"nodepilot-{name}")

    async def supervise(self) -> int:
        """Until the monitor ends; a service that ends before it is started again (bounded)."""
        monitor = self.tasks["monitor"]
        while True:
            await asyncio.wait(set(self.tasks.values()), return_when=asyncio.FIRST_COMPLETED)
            if monitor.done():
                return _code(monitor)
            for name, task in list(self.tasks.items()):
                if task.done() and name != "monitor":
                    if self.restarts[name] >= MAX_RESTARTS:
                        log.error("%s ended (%s) %d times: stopping the pilot", name, _code(task), MAX_RESTARTS)
                        self.instances["monitor"].on_signal(signal.SIGTERM)
                        return await monitor
                    self.restarts[name] += 1
                    log.warning("%s ended (%s): starting it again (%d/%d)", name, _code(task), self.restarts[name],
                                MAX_RESTARTS)
                    self.start(name)

    async def stop(self) -> None:
        for name, instance in self.instances.items():
            if name != "monitor":
                instance.stopping.set()
        others = [t for n, t in self.tasks.items() if n != "monitor" and not t.done()]
        if others:
            _done, late = await asyncio.wait(others, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)

    async def run(self) -> int:
        keeper: asyncio.Task[None] | None = None
        try:
            try:
                await self.prepare()
            except (RedisStartError, RedisError, RuntimeError, OSError) as exc:
                log.error("cannot start: %s", exc)
                return exitcodes.SERVICES
            if self.lease is not None:
                keeper = asyncio.create_task(self.lease.keep())
            self.start("monitor")
            for name in SERVICES:
                if name != "monitor":
                    self.start(name)
            return await self.supervise()
        finally:
            await self.stop()
            if keeper is not None:
                keeper.cancel()
            if self.lease is not None:
                await self.lease.release()
            if self.redis is not None:
                await asyncio.to_thread(self.redis.stop)


def _code(task: asyncio.Task[Any]) -> int:
    if task.cancelled():
        return exitcodes.INTERNAL
    exc = task.exception()
    if exc is not None:
        log.error("service failed", exc_info=exc)
        return exitcodes.INTERNAL
    result = task.result()
    return int(result) if isinstance(result, int) else exitcodes.OK


def run_in_process(config: PilotConfig) -> int:
    """The whole pilot in this process; its exit code."""
    pilot = InProcess(config)
    pilot.catch_signals()
    try:
        return asyncio.run(pilot.run())
    finally:
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
