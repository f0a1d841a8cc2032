"""Start a payload in its own session, wait for its end without polling, and kill its whole tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from services.runner.cgroup import PayloadCgroup
from services.runner.report import STDERR, STDOUT

log = logging.getLogger(__name__)

# the pilot's own settings and credentials: never handed to the payload
SECRET_ENV = re.compile(
    r"NODEPILOT_.*|REDIS_URL|REDIS_PASSWORD|X509_USER_PROXY|.*BEARER_TOKEN.*|.*_TOKEN|.*_TOKEN_FILE|PANDA_AUTH_.*"
)


def payload_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not SECRET_ENV.fullmatch(k)}
    env.update(extra)
    return env


def payload_script(setup: str, command: str, args: str) -> str:
    return f"{setup}\n{command} {args}"


_cleanups: set[asyncio.Task[None]] = set()


@dataclass
class Ended:
    exit_code: int | None  # None: killed by a signal, or the status is unknown
    signal: int | None
    end_time: float
    cpu_seconds: float
    max_rss_kb: int
    oom_kills: int = 0  # processes of the payload the kernel's OOM killer ended (known with a cgroup)


@dataclass(eq=False)
class Payload:
    """One running payload: the leader of its own process group (pgid == pid)."""

    proc: subprocess.Popen[bytes]
    job_id: int
    request_id: str
    start_time: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    kill_reason: str = ""
    ended: Ended | None = None
    cgroup: PayloadCgroup | None = None  # every process of the payload, escaped or not, where we have one
    _strays: dict[int, psutil.Process] = field(default_factory=dict)
    _kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> Ended:
        try:
            _pid, status, usage = await asyncio.to_thread(os.wait4, self.pid, 0)
        except ChildProcessError:  # reaped by someone else: the status is lost
            self.proc.returncode = -1
            self.ended = Ended(None, None, time.time(), 0.0, 0)
            return self.ended
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        self.ended = Ended(exit_code, signum, time.time(), round(usage.ru_utime + usage.ru_stime, 3),
                           int(usage.ru_maxrss))
        if self._kill_timer is None:
            # processes the payload left behind in its group (or its cgroup) are orphans now
            signal_group(self.pid, signal.SIGKILL)
            if self.cgroup is not None:
                self.cgroup.signal(signal.SIGKILL)
        if self.cgroup is not None:
            self.ended.oom_kills = self.cgroup.oom_kills()
            cleanup = asyncio.get_running_loop().create_task(remove_when_empty(self.cgroup))
            _cleanups.add(cleanup)  # a task nobody holds may be collected before it ends
            cleanup.add_done_callback(_cleanups.discard)
        return self.ended

    def tracked_pids(self) -> list[int]:
        """Processes known to belong to the payload besides its descendants (its cgroup's)."""
        return self.cgroup.pids() if self.cgroup is not None else []

    def kill(self, grace: float, reason: str) -> None:
        """SIGTERM to the group and to descendants that left it; SIGKILL to both after ``grace``."""
        self.kill_reason = self.kill_reason or reason
        self._snapshot()
        self._signal_all(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = asyncio.get_running_loop().call_later(max(grace, 0.0), self._force_kill)

    def kill_now(self, reason: str) -> None:
        self.kill_reason = self.kill_reason or reason
        self._force_kill()

    def _force_kill(self) -> None:
        self._snapshot()
        self._signal_all(signal.SIGKILL)

    def _snapshot(self) -> None:
        if self.ended is not None:
            return  # reaped: its pid may belong to someone else now
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._strays.setdefault(child.pid, child)

    def _signal_all(self, signum: int) -> None:
        signal_group(self.pid, signum)
        if self.cgroup is not None:
            self.cgroup.signal(signum)
        for proc in self._strays.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)  # psutil checks it is still the same process


def signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(job_id: int, request_id: str, workdir: Path, script: str, env: dict[str, str]) -> Payload:
    """Run ``script`` with bash in ``workdir``; raises OSError when it cannot be started."""
    bash = shutil.which("bash") or "/bin/bash"
    cgroup = PayloadCgroup.create(job_id)
    try:
        with (workdir / STDOUT).open("wb") as out, (workdir / STDERR).open("wb") as err:
            proc = subprocess.Popen(
                [bash, "-c", script], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True, preexec_fn=cgroup.enter if cgroup else None,
            )
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    if cgroup is not None:
        cgroup.started()
    return Payload(proc, job_id, request_id, cgroup=cgroup)


async def remove_when_empty(cgroup: PayloadCgroup, timeout: float = 30.0) -> None:
    """The kernel empties a killed cgroup in a moment; remove it then (bounded, off the job's path)."""
    deadline = time.monotonic() + timeout
    while not cgroup.remove():
        if time.monotonic() > deadline:
            log.warning("cgroup %s still has processes after %.0f s: left in place", cgroup.path, timeout)
            return
        cgroup.signal(signal.SIGKILL)
        await asyncio.sleep(0.1)


async def wait_gone(pid: int, timeout: float) -> None:
    """Until process ``pid`` (not our child) has exited, at most ``timeout`` s: a pidfd, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: give it the whole time
        await asyncio.sleep(timeout)
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


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
