"""Start a payload in its own session, wait for its end without polling, and kill its whole tree.

Every payload runs under a shim: a bash that starts the payload's command line (in a sandbox or
not, see isolation.py), waits for it, writes its exit status to a file in the pilot's run dir and
ends the same way. The shim leads the payload's process group, ignores the signals the runner
sends to the group (it only waits) and outlives a runner that dies, so a restarted runner adopts
the payload still running and still learns how it ended (``adopt``).
"""

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from nodepilot.reports import STDERR, STDOUT
from services.runner.cgroup import PayloadCgroup

log = logging.getLogger(__name__)

# the pilot's own settings and credentials: never handed to the payload
SECRET_ENV = re.compile(
    r"NODEPILOT_.*|REDIS_URL|REDIS_PASSWORD|X509_USER_(PROXY|CERT|KEY)|.*BEARER_TOKEN.*|.*_TOKEN|.*_TOKEN_FILE"
    r"|PANDA_AUTH_.*"
)
# $0: the status file; "$@": the payload's command line. Signals sent to the group run ":" here
# (the payload still gets them: a handler is not inherited); the shim's own stderr is /dev/null so
# its reports ("Segmentation fault ...") stay out of payload.stderr; a payload killed by signal N
# (status 128+N, N a signal whose default is to terminate) ends the shim with the same signal.
# the payload's parent: $0 the status file, $1 the cgroup.procs to join first ("" for none: "0" is the writer
# itself, and what it starts inherits it), then the command; it writes the command's exit status
SHIM = """trap : HUP INT QUIT USR1 USR2 ALRM TERM XCPU XFSZ VTALRM PROF
if [ -n "$1" ] && ! echo 0 2>/dev/null > "$1"; then
echo "nodepilot: the payload cannot join its cgroup ($1)" >&2; echo 125 > "$0"; exit 125
fi
shift
exec 3>&2 2>/dev/null
"$@" 2>&3 3>&-
s=$?
echo "$s" > "$0"
case $s in 129|13[0-9]|14[0-4]|15[2-5]|15[7-9]) trap - $((s - 128)); ulimit -c 0; kill -$((s - 128)) $$ ;; esac
exit "$s"
"""
STATUS_DIR = "runner-status"
LATE_TERM_S = (0.2, 1.0)  # s after a kill's SIGTERM that found no process of the command yet: again


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


def status_file(run_dir: str | Path, job_id: int, request_id: str) -> Path:
    """Where the shim of a run request writes its payload's exit status (a name safe for any request id)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)[:100]
    return Path(run_dir) / STATUS_DIR / f"{job_id}.{safe}.status"


def read_status(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def ended_from_status(status: int, end_time: float) -> Ended:
    """What the shim's status means, as the shim's own end would say it (signal N for 128+N)."""
    code = status - 128
    terminating = 1 <= code <= 16 or 24 <= code <= 27 or 29 <= code <= 31
    return Ended(None if terminating else status, code if terminating else None, end_time, 0.0, 0)


@dataclass(eq=False)
class Payload:
    """One running payload: its shim leads its own process group (pgid == pid)."""

    proc: subprocess.Popen[bytes] | None  # None: adopted from a previous runner (not our child)
    job_id: int
    request_id: str
    start_time: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    kill_reason: str = ""
    ended: Ended | None = None
    cgroup: PayloadCgroup | None = None  # every process of the payload, escaped or not, where we have one
    isolation: str = "none"  # apptainer | bwrap | none
    status_path: Path | None = None  # where the shim writes the exit status
    leader: int = 0  # the shim's pid when adopted
    _strays: dict[int, psutil.Process] = field(default_factory=dict)
    _kill_timer: asyncio.TimerHandle | None = None
    _termed: set[int] = field(default_factory=set)  # pids a kill's SIGTERM went to

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else self.leader

    @property
    def sandboxed(self) -> bool:
        return self.isolation != "none"

    async def wait(self) -> Ended:
        if self.proc is None:
            return await self._wait_adopted()
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
        return self._ended()

    async def _wait_adopted(self) -> Ended:
        """A payload a previous runner started: its shim is not our child; its status is in the file."""
        await wait_gone(self.pid, None)
        status = read_status(self.status_path) if self.status_path else None
        if status is not None:
            self.ended = ended_from_status(status, time.time())
        else:  # the shim itself was killed: by our SIGKILL if we were killing, else nobody knows
            self.ended = Ended(None, signal.SIGKILL if self._kill_timer else None, time.time(), 0.0, 0)
        return self._ended()

    def _ended(self) -> Ended:
        """(The status file stays until the end is reported: a runner killed meanwhile leaves it to the next.)"""
        assert self.ended is not None
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
            loop = asyncio.get_running_loop()
            self._termed = {proc.pid for proc in self._members()}
            # nothing of the payload's command ran yet (a sandbox still being set up): it gets the TERM once it does
            for delay in LATE_TERM_S if not self._termed else ():
                if delay < grace:
                    loop.call_later(delay, self._term_latecomers)
            self._kill_timer = loop.call_later(max(grace, 0.0), self._force_kill)

    def _members(self) -> list[psutil.Process]:
        """The payload's processes a TERM is for: inside the sandbox, or the whole tree."""
        if self.sandboxed:
            return self._inside()
        return [*self._strays.values(), *(p for p in self._processes(self.tracked_pids()) if p.pid not in self._strays)]

    def _term_latecomers(self) -> None:
        if self.ended is not None:
            return
        self._snapshot()
        for proc in self._members():
            if proc.pid not in self._termed:
                self._termed.add(proc.pid)
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGTERM)

    @staticmethod
    def _processes(pids: list[int]) -> list[psutil.Process]:
        found = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
        return found

    def notify(self, signum: int) -> None:
        """A signal to every process of the payload, e.g. a warning it may act on."""
        if self.ended is None:
            self._snapshot()
            self._signal_all(signum)

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
        if self.sandboxed and signum != signal.SIGKILL:
            # the group and the cgroup hold the sandbox's own processes (bwrap, apptainer's starter):
            # a signal that ended them would end the sandbox at once, so only what runs inside gets it
            for proc in self._inside():
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signum)
            return
        signal_group(self.pid, signum)
        if self.cgroup is not None:
            self.cgroup.signal(signum)
        for proc in self._strays.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)  # psutil checks it is still the same process

    def _inside(self) -> list[psutil.Process]:
        """The payload's processes inside its sandbox: in a child pid namespace, but not its init."""
        candidates = dict(self._strays)
        for proc in self._processes(self.tracked_pids()):
            candidates.setdefault(proc.pid, proc)
        return [p for p in candidates.values() if _nested_pid(p.pid) not in (None, 1)]


def _nested_pid(pid: int) -> int | None:
    """A process's pid in the innermost pid namespace it is in, None if that is ours (or it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return int(ids[-1]) if len(ids) > 1 else None
    except (OSError, ValueError):
        pass
    return None


def signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(job_id: int, request_id: str, workdir: Path, script: str, env: dict[str, str], *,
          prefix: Sequence[str] = (), isolation: str = "none", status_path: Path | None = None) -> Payload:
    """Run ``script`` with bash in ``workdir``, after the sandbox's ``prefix``, under the shim (which
    writes the exit status to ``status_path``); raises OSError when it cannot be started."""
    bash = shutil.which("bash") or "/bin/bash"
    status_arg = str(status_path) if status_path is not None else "/dev/null"
    if status_path is not None:
        status_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            status_path.unlink()  # a stale one would pass for this payload's
    # inside a sandbox the payload's bash is the sandbox's (same path: /usr is mounted)
    cgroup = PayloadCgroup.create(job_id)
    # no preexec_fn: a Python hook in the child makes Popen fork the whole runner (measured 6-23 ms before the
    # payload starts) where it otherwise uses vfork (0.3 ms); the shim joins the cgroup instead
    argv = [bash, "-c", SHIM, status_arg, str(cgroup.procs) if cgroup else "", *prefix, bash, "-c", script]
    try:
        with (workdir / STDOUT).open("wb") as out, (workdir / STDERR).open("wb") as err:
            proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    return Payload(proc, job_id, request_id, cgroup=cgroup, isolation=isolation, status_path=status_path)


async def finish_cleanups(timeout: float) -> None:
    """Let the removals of ended payloads' cgroups finish (a stopping runner: bounded)."""
    if _cleanups:
        await asyncio.wait(list(_cleanups), timeout=timeout)


async def remove_when_empty(cgroup: PayloadCgroup, timeout: float = 30.0) -> None:
    """The kernel empties a killed cgroup in a moment; remove it then (bounded, off the job's path)."""
    deadline = time.monotonic() + timeout
    while not cgroup.remove():
        if time.monotonic() > deadline:
            log.warning("cgroup %s still has processes after %.0f s: left in place", cgroup.path, timeout)
            return
        cgroup.signal(signal.SIGKILL)
        await asyncio.sleep(0.1)


async def wait_gone(pid: int, timeout: float | None) -> None:
    """Until process ``pid`` (not our child) has exited, at most ``timeout`` s (None: no limit): a pidfd,
    no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: give it the whole time (a second at a time without limit)
        while timeout is None and psutil.pid_exists(pid):
            await asyncio.sleep(1.0)
        await asyncio.sleep(timeout or 0.0)
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
