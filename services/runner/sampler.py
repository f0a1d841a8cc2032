"""Resource usage of a payload's whole process tree, sampled while it runs.

Every process ever seen descending from the payload belongs to its tree, also after it left the
payload's session (``setsid``) or was re-parented when its parent ended: the sampler keeps the
processes it knows and looks for new children of every one of them still alive at each sample.
A process that appears and ends between two samples is never seen: the payload's rusage (its
own and its waited-for children's CPU) covers those, so the reported CPU time is the larger of
the two.

Per sample: RSS, PSS, VMEM and swap summed over the live processes (``memory_full_info``; where
PSS is not readable, RSS stands in for PSS and swap counts 0), CPU user + system seconds and
read/write bytes summed over every process seen (a process that ended keeps its last values,
so the totals never go down), and the numbers of processes and threads.

Outputs: ``<workdir>/memory_monitor_output.json`` (every sample, rewritten atomically at each
one) and the hash ``runner:job:<id>:usage`` (the latest sample, plus ``pids``: a JSON list of
the tree's live pids, plus the ``UsageSummary`` of the samples so far: ``max_rss_kb``,
``cpu_seconds``...) that the monitor's watchdog and its heartbeats read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from nodepilot.gpu import gpu_usage
from nodepilot.usage import USAGE_FILE, usage_key

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0
USAGE_TTL_S = 7 * 86400
STOP_TIMEOUT_S = 10.0  # the last sample after the payload ended
KB = 1024


@dataclass
class Sample:
    time: float
    rss_kb: int = 0
    pss_kb: int = 0
    vmem_kb: int = 0
    swap_kb: int = 0
    cpu_s: float = 0.0
    rbytes: int = 0
    wbytes: int = 0
    nprocs: int = 0
    nthreads: int = 0
    gpu_mem_kb: int = 0  # GPU memory the payload's processes hold (0: no GPU, or none used)
    gpu_util_pct: int = 0  # utilisation of the GPUs they use
    pids: list[int] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """One entry of the JSON file (without the pids)."""
        entry = asdict(self)
        del entry["pids"]
        return entry

    def hash_fields(self) -> dict[str, str]:
        return {name: json.dumps(value) for name, value in asdict(self).items()}


@dataclass
class Counters:
    """What only grows over a process's life."""

    cpu_s: float = 0.0
    rbytes: int = 0
    wbytes: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.cpu_s + other.cpu_s, self.rbytes + other.rbytes, self.wbytes + other.wbytes)

    def at_least(self, other: Counters) -> Counters:
        return Counters(max(self.cpu_s, other.cpu_s), max(self.rbytes, other.rbytes),
                        max(self.wbytes, other.wbytes))


@dataclass
class Reading:
    """One process at one moment."""

    rss: int
    pss: int
    vms: int
    swap: int
    threads: int
    counters: Counters


def read_process(proc: psutil.Process) -> Reading:
    """Raises psutil.NoSuchProcess (also for a zombie) when the process has ended."""
    with proc.oneshot():
        if proc.status() == psutil.STATUS_ZOMBIE:
            raise psutil.ZombieProcess(proc.pid)
        cpu = proc.cpu_times()
        counters = Counters(cpu.user + cpu.system)
        with contextlib.suppress(psutil.AccessDenied, AttributeError):
            io = proc.io_counters()
            counters.rbytes, counters.wbytes = io.read_bytes, io.write_bytes
        threads = proc.num_threads()
        try:
            full = proc.memory_full_info()
            return Reading(full.rss, full.pss, full.vms, full.swap, threads, counters)
        except psutil.AccessDenied:
            mem = proc.memory_info()
            return Reading(mem.rss, mem.rss, mem.vms, 0, threads, counters)


class ProcessTree:
    """The processes of one payload, and its totals. Not thread-safe: one sample at a time."""

    def __init__(self, root_pid: int, members: Callable[[], list[int]] | None = None) -> None:
        self.members = members  # pids known to be the payload's whatever their parent (its cgroup)
        self.known: dict[int, psutil.Process] = {}
        self._last: dict[int, Counters] = {}  # live processes: their counters at the last sample
        self._ended = Counters()  # processes that ended: their counters at their last sample
        self._total = Counters()
        with contextlib.suppress(psutil.Error):
            self.known[root_pid] = psutil.Process(root_pid)

    def sample(self) -> Sample:
        self._discover()
        sample = Sample(time=round(time.time(), 3))
        live = Counters()
        for pid, proc in list(self.known.items()):
            try:
                reading = read_process(proc)
            except psutil.NoSuchProcess:
                self._forget(pid)
                continue
            except psutil.Error as exc:  # e.g. AccessDenied on a setuid child: counted, not measured
                log.debug("cannot read process %s: %s", pid, exc)
                reading = Reading(0, 0, 0, 0, 0, self._last.get(pid, Counters()))
            self._last[pid] = reading.counters
            live = live + reading.counters
            sample.rss_kb += reading.rss // KB
            sample.pss_kb += reading.pss // KB
            sample.vmem_kb += reading.vms // KB
            sample.swap_kb += reading.swap // KB
            sample.nthreads += reading.threads
            sample.pids.append(pid)
        sample.nprocs = len(sample.pids)
        self._total = (self._ended + live).at_least(self._total)
        sample.cpu_s = round(self._total.cpu_s, 3)
        sample.rbytes, sample.wbytes = self._total.rbytes, self._total.wbytes
        return sample

    def _forget(self, pid: int) -> None:
        self.known.pop(pid, None)
        self._ended = self._ended + self._last.pop(pid, Counters())

    def _discover(self) -> None:
        """Drop the processes that ended, then add every new descendant of the live ones."""
        for pid, proc in list(self.known.items()):
            if not proc.is_running():  # gone, or its pid belongs to another process now
                self._forget(pid)
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info["ppid"]
            if ppid is not None:
                children.setdefault(ppid, []).append(proc)
        for pid in self.members() if self.members else []:
            if pid not in self.known:
                with contextlib.suppress(psutil.Error):
                    self.known[pid] = psutil.Process(pid)
        todo = list(self.known)
        while todo:
            for child in children.get(todo.pop(), []):
                if child.pid not in self.known:
                    self.known[child.pid] = child
                    todo.append(child.pid)


def write_samples(path: Path, samples: list[Sample]) -> None:
    """Rewrite the JSON file atomically (readers see the old or the new file, never a part)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"samples": [s.record() for s in samples]}, separators=(",", ":")))
    os.replace(tmp, path)


class UsageSampler:
    """Samples a payload's tree every ``interval`` s (the first at once) until ``stop``."""

    def __init__(self, r: aioredis.Redis, job_id: int, root_pid: int, workdir: Path,
                 interval: float = DEFAULT_INTERVAL_S, members: Callable[[], list[int]] | None = None) -> None:
        self.r, self.job_id, self.interval = r, job_id, interval
        self.path = workdir / USAGE_FILE
        self.tree = ProcessTree(root_pid, members)
        self.samples: list[Sample] = []
        self.started = time.time()
        self.summary = UsageSummary()  # of the samples so far
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing: set[str] = set()  # outputs that failed: logged once until they work again

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Sample]:
        """Take a last sample and end; returns every sample taken."""
        self._stop.set()
        if self._task is not None:
            done, _pending = await asyncio.wait([self._task], timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning("job %s: the last usage sample took longer than %s s", self.job_id, STOP_TIMEOUT_S)
                self.cancel()
        return list(self.samples)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._sample()
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):  # a sampling period, cut short by stop()
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def _sample(self) -> None:
        try:
            sample = await asyncio.to_thread(self._take)
        except Exception:
            log.exception("job %s: cannot sample the payload's processes", self.job_id)
            return
        try:
            key = usage_key(self.job_id)
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={**sample.hash_fields(),
                                        **{k: json.dumps(v) for k, v in self.summary.to_dict().items()}})
                pipe.expire(key, USAGE_TTL_S)
                await pipe.execute()
            self._recovered("redis")
        except Exception as exc:
            self._failed("redis", f"cannot publish the usage sample: {exc!r}")

    def _take(self) -> Sample:
        """In a thread: read /proc and rewrite the JSON file."""
        sample = self.tree.sample()
        for name, value in gpu_usage(sample.pids).items():
            setattr(sample, name, value)
        self.samples.append(sample)
        self.summary = summarize(self.samples, wall_s=sample.time - self.started)
        try:
            write_samples(self.path, self.samples)
            self._recovered("file")
        except OSError as exc:
            self._failed("file", f"cannot write {self.path}: {exc}")
        return sample

    def _failed(self, what: str, message: str) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("job %s: %s", self.job_id, message)

    def _recovered(self, what: str) -> None:
        self._failing.discard(what)


@dataclass
class UsageSummary:
    """The usage figures of ``payload_finished``."""

    cpu_seconds: float = 0.0
    max_rss_kb: int = 0
    max_pss_kb: int = 0
    max_vmem_kb: int = 0
    max_swap_kb: int = 0
    avg_rss_kb: int = 0
    avg_pss_kb: int = 0
    avg_vmem_kb: int = 0
    avg_swap_kb: int = 0
    tot_rbytes: int = 0
    tot_wbytes: int = 0
    rate_rbytes: int = 0
    rate_wbytes: int = 0
    max_gpu_mem_kb: int = 0
    avg_gpu_util_pct: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: list[Sample], rusage_cpu_s: float = 0.0, rusage_maxrss_kb: int = 0,
              wall_s: float = 0.0) -> UsageSummary:
    """Maxima over every sample, averages over the samples that saw a live process, totals of the
    last sample. CPU time: at least what the payload's rusage says. Max RSS: the rusage's only when
    no sample saw a process (Linux counts the forking runner's RSS in a child's ru_maxrss)."""
    live = [s for s in samples if s.nprocs] or samples
    last = samples[-1] if samples else Sample(0.0)

    def peak(name: str) -> int:
        return max((getattr(s, name) for s in samples), default=0)

    def mean(name: str) -> int:
        return round(sum(getattr(s, name) for s in live) / len(live)) if live else 0

    def rate(total: int) -> int:
        return round(total / wall_s) if wall_s > 0 else 0

    return UsageSummary(
        cpu_seconds=round(max(rusage_cpu_s, last.cpu_s), 3),
        max_rss_kb=peak("rss_kb") or rusage_maxrss_kb, max_pss_kb=peak("pss_kb"),
        max_vmem_kb=peak("vmem_kb"), max_swap_kb=peak("swap_kb"),
        avg_rss_kb=mean("rss_kb"), avg_pss_kb=mean("pss_kb"), avg_vmem_kb=mean("vmem_kb"),
        avg_swap_kb=mean("swap_kb"),
        tot_rbytes=last.rbytes, tot_wbytes=last.wbytes,
        rate_rbytes=rate(last.rbytes), rate_wbytes=rate(last.wbytes),
        max_gpu_mem_kb=peak("gpu_mem_kb"), avg_gpu_util_pct=mean("gpu_util_pct"),
    )
