"""What every watchdog check shares: its context, its verdict, and the one way limits are compared."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot.job import Job
from nodepilot.queue.model import QueueData
from nodepilot.usage import read_usage

MAX_SCAN_ENTRIES = 100_000
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Firing:
    """A check's verdict that something is wrong: the job's error code and why."""

    code: int
    diag: str  # the reason, with the measured value and the limit
    kill: bool = True  # kill the payload (False: only report)


@dataclass
class CheckContext:
    """What a check may look at: the job, its work dir, the queue, the payload's start and usage."""

    job: Job
    workdir: Path
    queuedata: QueueData
    started: float  # epoch of the payload's start
    redis: aioredis.Redis
    clock: Callable[[], float] = field(default=time.time)

    def now(self) -> float:
        return self.clock()

    async def usage(self) -> dict[str, Any]:
        """The runner's latest sample of the payload tree ({} before the first one)."""
        return await read_usage(self.redis, self.job.panda_id)


class Check:
    """One watchdog check: ``check`` runs every ``period_s`` s and sets ``value`` (what it measured)."""

    name = "check"
    code = 0
    period_s = 60.0

    def __init__(self, period_s: float | None = None) -> None:
        if period_s is not None:
            self.period_s = period_s
        self.value: Any = None

    async def check(self, ctx: CheckContext) -> Firing | None:
        raise NotImplementedError

    def compare(self, what: str, value: float | None, limit: float | None, *, fmt: Callable[[float], str] = str,
                below: bool = False, note: str = "") -> Firing | None:
        """Record ``value``; a Firing with this check's code when it is beyond ``limit`` (None: no limit).

        Fires when ``value > limit``, or ``value < limit`` with ``below``."""
        self.value = value
        if value is None or limit is None or not (value < limit if below else value > limit):
            return None
        relation = "below" if below else "above"
        return Firing(self.code, f"{what} {fmt(value)} is {relation} the limit {fmt(limit)}{note}")




def largest_file(workdir: Path, names: Iterable[str]) -> tuple[str, int | None]:
    """The biggest of the named files present in ``workdir``: (name, size); ("", None) if none is."""
    best: tuple[str, int | None] = ("", None)
    for name in names:
        try:
            size = (workdir / name).stat().st_size
        except OSError:
            continue
        if best[1] is None or size > best[1]:
            best = (name, size)
    return best


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit} ({int(n)} B)"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s"


@dataclass
class TreeScan:
    """A bounded walk of a directory tree: regular files only, symlinks not followed."""

    root: Path
    max_entries: int = MAX_SCAN_ENTRIES
    entries: int = 0
    truncated: bool = False  # stopped after max_entries: what was seen is a part of the tree

    def files(self) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
        stack = [str(self.root)]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        self.entries += 1
                        if self.entries > self.max_entries:
                            self.truncated = True
                            return
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                yield entry, entry.stat(follow_symlinks=False)
                        except OSError:  # removed meanwhile
                            continue
            except OSError:  # a directory removed or unreadable meanwhile
                continue
