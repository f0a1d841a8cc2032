"""Payloads a previous runner started: found again by their shim (a runner that died between starting
one and saying so), adopted while their shim runs, or killed when nothing is waiting for them."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import psutil

from services.runner.cgroup import PREFIX as CGROUP_PREFIX
from services.runner.cgroup import PayloadCgroup, delegated_base
from services.runner.execute import SHIM, Payload, signal_group, wait_gone


def adopt(job_id: int, request_id: str, pid: int, create_time: float | None, status_path: Path,
          isolation: str = "none") -> Payload | None:
    """The payload a previous runner started, if its shim still runs (same process, not a reused pid)."""
    leader = process_identity(pid)
    if leader is None or create_time is None or abs(leader - create_time) > 1.0 or not _is_shim(pid, status_path):
        return None
    payload = Payload(None, job_id, request_id, isolation=isolation, status_path=status_path, leader=pid,
                      cgroup=_cgroup_of(pid))
    payload._snapshot()
    return payload


def find_shim(status_path: Path) -> int | None:
    """A shim running for ``status_path`` (a runner that died between starting it and saying so)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if _shim_cmdline(proc.info["cmdline"] or [], status_path):
            return proc.info["pid"]
    return None


def _shim_cmdline(cmdline: Sequence[str], status_path: Path) -> bool:
    """``cmdline`` is the shim's for ``status_path`` (bash -c SHIM <status file> ...)."""
    return len(cmdline) > 3 and cmdline[2] == SHIM and cmdline[3] == str(status_path)


def _is_shim(pid: int, status_path: Path) -> bool:
    with contextlib.suppress(psutil.Error):
        return _shim_cmdline(psutil.Process(pid).cmdline(), status_path)
    return False


def _cgroup_of(pid: int) -> PayloadCgroup | None:
    """The payload cgroup a process is in (one of ours under the delegated base), to go on using it."""
    base = delegated_base()
    try:
        line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return None
    name = line.rstrip("/").rsplit("/", 1)[-1]
    if base is None or not name.startswith(CGROUP_PREFIX) or not (base / name).is_dir():
        return None
    return PayloadCgroup(base / name)


def process_identity(pid: int) -> float | None:
    """The creation time of ``pid``, to recognise it later (None: no such process)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def host_tag() -> str:
    """Where pids mean the same thing: host, boot and pid namespace (a new container differs)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{os.uname().nodename}:{psutil.boot_time():.0f}:{namespace}"


async def kill_orphaned(pid: int, create_time: float | None, grace: float) -> bool:
    """Kill the group of a payload started by a previous runner; False if nothing of it is left."""
    leader = process_identity(pid)
    if leader is not None and create_time is not None and abs(leader - create_time) > 1.0:
        return False  # the pid belongs to another process now
    if pid == os.getpgrp() or not signal_group(pid, 0):
        return False
    strays: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        strays = psutil.Process(pid).children(recursive=True)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        signal_group(pid, signum)
        for proc in strays:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
        if signum == signal.SIGTERM:
            await wait_gone(pid, grace)
    return True
