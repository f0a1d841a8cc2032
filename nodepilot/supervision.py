"""What the two ways of running the pilot (services as forked processes: launcher.py; as tasks of one
process: inprocess.py) share in keeping it alive: one restart policy, one embedded Redis kept with its
append-only file, and one size of thread pool per service.

Restart policy: a service (or Redis) that ended is started again, unless it ended more than
``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``; then the pilot gives it up (and stops).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from nodepilot.redis_server import EmbeddedRedis, RedisStartError, spawn_redis

log = logging.getLogger("nodepilot.supervision")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


class RestartPolicy:
    def __init__(self, names: Iterable[str], max_restarts: int = MAX_RESTARTS,
                 window_s: float = RESTART_WINDOW_S) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.restarts: dict[str, int] = dict.fromkeys(names, 0)
        self._deaths: dict[str, deque[float]] = {name: deque() for name in self.restarts}

    def allow(self, name: str, exitcode: object) -> bool:
        """``name`` ended (with ``exitcode``): whether to start it again (it is counted if so)."""
        now = time.monotonic()
        deaths = self._deaths.setdefault(name, deque())
        deaths.append(now)
        while now - deaths[0] > self.window_s:
            deaths.popleft()
        if len(deaths) > self.max_restarts:
            log.error("%s died (exit %s) %d times within %.0f s: giving up", name, exitcode, len(deaths), self.window_s)
            return False
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.warning("%s died (exit %s): restarting (%d in the last %.0f s, %d in all)", name, exitcode, len(deaths),
                    self.window_s, self.restarts[name])
        return True


async def process_ended(pid: int) -> None:
    """Until process ``pid`` has ended (a pidfd on the loop: no polling)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def spawn_pilot_redis(run_dir: Path) -> EmbeddedRedis:
    """The pilot's own Redis, append-only (fsync every second: a killed Redis loses nothing it acknowledged),
    so that one that died comes back with every key, stream and consumer group; call ``wait_ready`` next."""
    return spawn_redis(run_dir / "redis", appendonly=True)


def restart_redis(redis: EmbeddedRedis) -> bool:
    """Start a Redis that ended again from its append-only file (blocking, bounded); False if it cannot be."""
    try:
        redis.restart()
        redis.wait_ready()  # the services retry their commands meanwhile
    except (RedisStartError, OSError) as exc:
        log.error("Redis cannot be restarted: %s", exc)
        return False
    log.warning("Redis restarted from its append-only file (pid %s)", redis.process.pid)
    return True
