"""Event ranges from the source into the job's store: on demand when the payload asks for more than
is ready, and ahead of it in the background so that it seldom waits.

A fetch asks for ``batch`` ranges, or as many as the payload took in the last second when that is
more (up to ``MAX_FETCH_BATCHES`` batches: a fast payload makes fewer, larger calls); the next one
starts as soon as fewer than half a fetch are ready (at most a fetch and a half are held). A
source that has nothing more (or only repeats what we hold: a file source after a restart) is
``exhausted``, and stays so in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from services.eventclient.payload import Refused
from services.eventclient.ranges import RangeStore
from services.eventclient.sources import RangeSource

log = logging.getLogger(__name__)

RATE_WINDOW_S = 1.0
MAX_FETCH_BATCHES = 10


class Fetcher:
    def __init__(self, store: RangeStore, batch: int, stopped: Callable[[], bool]) -> None:
        self.store, self.batch, self.stopped = store, batch, stopped  # stopped: no range handed out any more
        self.source: RangeSource | None = None
        self.exhausted = False
        self._lock = asyncio.Lock()  # one fetch at a time
        self._ahead: asyncio.Task[None] | None = None
        self._repeats = 0  # fetches in a row that brought nothing new
        self._handed: deque[tuple[float, int]] = deque()  # (when, how many) ranges went to the payload lately

    async def ensure(self, n: int, strict: bool) -> None:
        """At least ``n`` ranges ready if the source has them (``strict``: Refused 503 if it failed
        and none is ready; else whatever is ready will do)."""
        if n and self.store.count("ready") < n and not self.stopped():
            async with self._lock:
                try:
                    await self._fill(n)
                except Refused:
                    if strict:
                        raise

    def handed(self, n: int) -> None:
        """``n`` ranges went to the payload: fetch ahead if they run low."""
        if n:
            self._handed.append((time.monotonic(), n))
        if (self.exhausted or self.stopped() or self._lock.locked()
                or (self._ahead is not None and not self._ahead.done()) or not self._running_low()):
            return
        self._ahead = asyncio.create_task(self._fetch_ahead())

    def stop(self) -> asyncio.Task[None] | None:
        """The fetch ahead in flight, cancelled (to be awaited with the session's tasks)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()
        return ahead

    async def _fill(self, n: int) -> None:
        while self.store.count("ready") < n and not self.exhausted and not self.stopped():
            try:
                await self._fetch()
            except Exception as exc:
                log.warning("job %s: no event ranges from the source: %r", self.store.job_id, exc)
                if self.store.count("ready"):
                    return
                raise Refused(503, f"the range source failed, ask again later: {exc}") from exc

    async def _fetch_ahead(self) -> None:
        async with self._lock:
            if self.exhausted or self.stopped() or not self._running_low():
                return
            try:
                await self._fetch()
            except Exception as exc:  # the next take asks again, and says so if it fails too
                log.warning("job %s: fetching event ranges ahead failed: %r", self.store.job_id, exc)

    async def _fetch(self) -> None:
        assert self.source is not None
        got = await self.source.acquire(self._size())
        async with self.store.lock:
            new = self.store.add(got)
            await self.store.save(*new)
        self._repeats = 0 if new else self._repeats + 1
        if not got or self._repeats > len(self.store.records) // self.batch + 1:
            self.exhausted = True
            await self.store.set_meta(exhausted="1")

    def _size(self) -> int:
        horizon = time.monotonic() - RATE_WINDOW_S
        while self._handed and self._handed[0][0] < horizon:
            self._handed.popleft()
        recent = sum(n for _, n in self._handed)
        return max(self.batch, min(recent, self.batch * MAX_FETCH_BATCHES))

    def _running_low(self) -> bool:
        return self.store.count("ready") * 2 < self._size()
