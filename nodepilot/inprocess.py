"""``nodepilot start --in-process``: the four services as asyncio tasks of one process, for HPC compute
nodes where services may not be forked as processes of their own. The same Service classes, the same Redis
streams, each HTTP API still on its Unix socket; every signal goes to the monitor (as the launcher
forwards them), and the process ends when the monitor's main worker ends.

Kept alive as the launcher keeps its processes (nodepilot/supervision.py): the same restart policy for a
service that ended and for the embedded Redis, which is append-only and restarted from its file. The
services share one loop, so they share its thread pool: it is sized once for all of them (a thread per
running payload's wait4, the stager's copies, the watchdog's scans), never replaced by one of them.

With ``--api relay`` the bus lives in a database of the front-end's Redis leased for this worker, so the
node runs no Redis of its own; otherwise a private Redis is embedded as by the launcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.exceptions import RedisError

from nodepilot import exitcodes
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.launcher import FORWARDED, STOP_GRACE
from nodepilot.panda.relay import DatabaseLease, default_worker_id
from nodepilot.redis_server import EmbeddedRedis, RedisStartError
from nodepilot.service import Service
from nodepilot.supervision import RestartPolicy, process_ended, restart_redis, spawn_pilot_redis

log = logging.getLogger("nodepilot.inprocess")


class InProcess:
    def __init__(self, config: PilotConfig) -> None:
        self.config = config
        self.redis: EmbeddedRedis | None = None
        self.lease: DatabaseLease | None = None
        self.instances: dict[str, Service] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}
        self.policy = RestartPolicy((*SERVICES, "redis"))
        self.early: list[int] = []
        self.redis_lost = False

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
            self.redis = spawn_pilot_redis(run)
            config.redis_url = self.redis.url
            await asyncio.to_thread(self.redis.wait_ready)
        config.save()
        os.environ.setdefault("NODEPILOT_LAUNCHED_AT", str(time.time()))

    def build(self, name: str) -> Service:
        from nodepilot.registry import service_class

        instance = service_class(name)(self.config)
        instance.owns_loop = False
        if name == "monitor":
            instance.early_signals = self.early  # the same list: a signal until its handlers exist is kept
        else:  # one process, one set of signal handlers: the monitor's
            instance.on_signal = self.instances["monitor"].on_signal  # type: ignore[method-assign]
        self.instances[name] = instance
        return instance

    def start(self, name: str, instance: Service | None = None) -> None:
        instance = instance or self.build(name)
        self.tasks[name] = asyncio.create_task(instance.serve(), name=f"nodepilot-{name}")

    def start_all(self) -> None:
        """Every service built, the loop's pool sized for all of them, then each started (the monitor first)."""
        for name in SERVICES:
            self.build(name)
        threads = sum(instance.threads for instance in self.instances.values())
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads, "nodepilot"))
        log.info("in-process: one pool of %d threads for the services' blocking calls", threads)
        for name in SERVICES:
            self.start(name, self.instances[name])

    async def supervise(self) -> int:
        """Until the monitor ends; a service that ends before it is started again (the restart policy)."""
        monitor = self.tasks["monitor"]
        while True:
            await asyncio.wait(set(self.tasks.values()), return_when=asyncio.FIRST_COMPLETED)
            if monitor.done():
                code = _code(monitor)
                return exitcodes.SERVICES if self.redis_lost and code == exitcodes.OK else code
            for name, task in list(self.tasks.items()):
                if task.done() and name != "monitor":
                    if not self.policy.allow(name, _code(task)):
                        self.give_up()
                        return await monitor
                    self.start(name)

    def give_up(self) -> None:
        """Something cannot be kept alive: the pilot stops (its jobs end as on a signal)."""
        self.instances["monitor"].on_signal(signal.SIGTERM)

    async def keep_redis(self) -> None:
        """Restart the embedded Redis whenever it ends (the restart policy); give up as the launcher does."""
        assert self.redis is not None
        while True:
            await process_ended(self.redis.process.pid)
            code = self.redis.process.wait()
            if not self.policy.allow("redis", code) or not await asyncio.to_thread(restart_redis, self.redis):
                self.redis_lost = True
                self.give_up()
                return

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
        keepers: list[asyncio.Task[None]] = []
        try:
            try:
                await self.prepare()
            except (RedisStartError, RedisError, RuntimeError, OSError) as exc:
                log.error("cannot start: %s", exc)
                return exitcodes.SERVICES
            if self.lease is not None:
                keepers.append(asyncio.create_task(self.lease.keep()))
            if self.redis is not None:
                keepers.append(asyncio.create_task(self.keep_redis()))
            self.start_all()
            return await self.supervise()
        finally:
            for keeper in keepers:
                keeper.cancel()
            await self.stop()
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
