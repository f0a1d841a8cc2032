"""Multi-slot pilots: the node's cores, memory, scratch disk and GPUs shared by the jobs a pilot runs at once.

The ledger hands resources to jobs and takes them back; whoever waits for room (the pilot's loop, before it
asks the server for the next job, or a job too big for what is free now) blocks on a condition that every
release wakes: no polling. A job asking for more than the whole pilot has is capped to the whole pilot, so it
runs alone rather than never.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import psutil

from nodepilot.job import Job
from nodepilot.limits import MAX_SLOTS, parse_slots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    cores: int = 0
    mem_mb: int = 0
    disk_mb: int = 0
    gpus: int = 0

    def _zip(self, other: Resources) -> list[tuple[int, int]]:
        return [(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)]

    def __add__(self, other: Resources) -> Resources:
        return Resources(*(a + b for a, b in self._zip(other)))

    def __sub__(self, other: Resources) -> Resources:
        return Resources(*(a - b for a, b in self._zip(other)))

    def fits_in(self, other: Resources) -> bool:
        return all(a <= b for a, b in self._zip(other))

    def capped(self, limit: Resources) -> Resources:
        return Resources(*(min(a, b) for a, b in self._zip(limit)))


def job_needs(job: Job) -> Resources:
    """What a job asks for: ``coreCount``, ``minRamCount`` (MB), ``maxDiskCount`` (MB), and one GPU
    when its resource type names one (``GPU``, ``SCORE_GPU``...: PanDA has no GPU count field)."""
    resource_type = str(job.raw.get("resource_type") or job.raw.get("resourceType") or "").upper()
    return Resources(cores=max(1, job.core_count), mem_mb=max(0, job.min_ram_count or 0),
                     disk_mb=max(0, job.max_disk_count or 0), gpus=1 if "GPU" in resource_type else 0)


def node_cores() -> int:
    """The cores this process may use: the batch system's count when it gives one, else the CPU affinity."""
    for name in ("SLURM_CPUS_ON_NODE", "NODEPILOT_CORES"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def node_capacity(slots: str | int, work_dir: str, gpus: int = 0) -> tuple[Resources, int]:
    """(what the pilot's jobs may use together, how many may run at once). ``--slots N`` gives the pilot N
    cores (more than the node has oversubscribes it, on purpose); ``auto`` the node's cores. Memory is the
    node's, disk what is free in the work dir now."""
    n = parse_slots(slots)
    cores = n or min(node_cores(), MAX_SLOTS)
    try:
        disk_mb = shutil.disk_usage(work_dir).free >> 20
    except OSError as exc:  # no work dir yet: disk does not limit (jobs are capped to what the pilot has)
        log.warning("free disk of %s unknown (%s): not counted", work_dir, exc)
        disk_mb = 0
    capacity = Resources(cores=cores, mem_mb=psutil.virtual_memory().total >> 20, disk_mb=disk_mb, gpus=gpus)
    return capacity, cores


class SlotLedger:
    def __init__(self, capacity: Resources, max_jobs: int) -> None:
        self.capacity, self.max_jobs = capacity, max(1, max_jobs)
        self.held: dict[int, Resources] = {}
        self._next = 0
        self._changed = asyncio.Condition()

    @property
    def used(self) -> Resources:
        return sum(self.held.values(), Resources())

    @property
    def free(self) -> Resources:
        return self.capacity - self.used

    def room_for_a_job(self) -> bool:
        """Another job may start: a slot and at least a core are free."""
        return len(self.held) < self.max_jobs and self.free.cores >= 1

    def fit(self, need: Resources, what: Any = "a job") -> Resources:
        """The need capped to the whole pilot (a job bigger than the pilot runs alone)."""
        capped = need.capped(self.capacity)
        if capped != need:
            log.warning("%s asks for %s, more than this pilot has (%s): it runs alone with %s",
                        what, need, self.capacity, capped)
        return capped

    async def wait_for_room(self, stop: Callable[[], bool]) -> None:
        """Until another job may start, or ``stop()`` (checked whenever ``wake`` or a release notifies)."""
        async with self._changed:
            await self._changed.wait_for(lambda: stop() or self.room_for_a_job())

    async def take(self, need: Resources, stop: Callable[[], bool]) -> int | None:
        """Reserve ``need`` (call ``fit`` first) once it fits in what is free; a token for ``release``,
        or None when ``stop()`` became true first."""
        def fits() -> bool:
            return len(self.held) < self.max_jobs and need.fits_in(self.free)

        async with self._changed:
            await self._changed.wait_for(lambda: stop() or fits())
            if not fits():  # woken by stop()
                return None
            self._next += 1
            self.held[self._next] = need
            return self._next

    async def release(self, token: int | None) -> None:
        async with self._changed:
            if token is not None:
                self.held.pop(token, None)
            self._changed.notify_all()

    async def wake(self) -> None:
        """Make waiters look at their ``stop()`` again."""
        async with self._changed:
            self._changed.notify_all()

    def acquire_params(self, resource_type: str) -> dict[str, Any]:
        """What the server should know to give a job that fits what is free now. Neither dialect takes a
        core count (an unknown parameter fails the call): one free core asks for a single-core job."""
        free = self.free
        params: dict[str, Any] = {}
        if self.capacity.mem_mb:
            params["mem"] = free.mem_mb
        if self.capacity.disk_mb:
            params["diskSpace"] = free.disk_mb
        if self.max_jobs > 1 and free.cores < 2 and not resource_type.upper().startswith("SCORE"):
            params["resourceType"] = "SCORE"
        return params

    def status(self) -> dict[str, Any]:
        return {"max_jobs": self.max_jobs, "running": len(self.held), "capacity": asdict(self.capacity),
                "free": asdict(self.free)}
