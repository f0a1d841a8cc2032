"""Start, supervise and stop the pilot: an embedded Redis and the four services.

Services run as separate processes forked from the launcher after the libraries they share
are imported once (start-up in milliseconds; shared pages keep memory low); the monitor is built
in the launcher, the others build themselves once forked. The monitor and the runner start
with the pilot; the others when the monitor needs them, and every service but the monitor retires
when it is needed no more (nodepilot/demand.py). Each gets its own process
group, so a Ctrl-C reaches the launcher only, which turns it into the monitor's graceful
stop; the others stop when the monitor is done. A service that dies is restarted, and so is the
embedded Redis (same socket and password; its append-only file in the run dir brings every key,
stream and consumer group back), unless it keeps dying. The monitor's exit code is the pilot's.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from nodepilot import exitcodes
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.demand import EAGER, ON_DEMAND, RETIRE, DemandLedger
from nodepilot.proc import die_with_parent, name_process
from nodepilot.redis_server import EmbeddedRedis, RedisStartError
from nodepilot.service import Service, import_first_use_modules, run_instance
from nodepilot.supervision import RestartPolicy, restart_redis, spawn_pilot_redis

log = logging.getLogger("nodepilot.launcher")

HEALTH_TIMEOUT = 30.0
STOP_GRACE = 10.0
GRACEFUL_STOP_BUDGET = 120.0
SPAWN_RETRY_S = 5.0  # a service needed that could not be started is tried again after this
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGXCPU, signal.SIGBUS)


class _SaidBefore(logging.Filter):
    """The warnings a service's build says (of its settings), said by its first instance only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING


def _service_main(build: Callable[[], Service], launcher_only: tuple[int, ...] = (), said_before: bool = False) -> None:
    """Entry of a forked service process: runs the service ``build`` gives: the launcher's pristine copy (the
    monitor), or one built here (the others: see ``Launcher.prepare``)."""
    os.setpgid(0, 0)
    die_with_parent()
    # its own stdout and stderr: the launcher's may be the progress display's proxies, whose locks one of its
    # threads may have held at the fork (a first write here would wait for ever)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own, for its life)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    for fd in launcher_only:
        os.close(fd)
    quiet = [(handler, _SaidBefore()) for handler in logging.getLogger().handlers] if said_before else []
    for handler, said in quiet:
        handler.addFilter(said)
    instance = build()  # the collector still off (as in the launcher while it started): no collection per import
    for handler, said in quiet:
        handler.removeFilter(said)
    name_process(f"np-{instance.name}")
    gc.enable()
    for signum in (*FORWARDED, RETIRE):  # kept until the service's own handlers are in place, then replayed
        signal.signal(signum, lambda signum, _frame: instance.early_signals.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*FORWARDED, RETIRE))  # blocked by the launcher around the fork
    sys.exit(run_instance(instance))


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` ends (None: this kernel has no pidfd)."""
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        log.warning("cannot watch process %s (%s): it is not restarted if it dies", pid, exc)
        return None


class Launcher:
    def __init__(self, config: PilotConfig) -> None:
        self.config = config
        self.redis: EmbeddedRedis | None = None
        self.procs: dict[str, multiprocessing.Process] = {}
        self.instances: dict[str, Service] = {}
        self.policy = RestartPolicy((*SERVICES, "redis"))  # the same as in-process (nodepilot/supervision.py)
        self._redis_fd: int | None = None  # readable when the embedded Redis has ended
        self.ctx = multiprocessing.get_context("fork")
        self.signal_received: int | None = None
        self.stop_deadline: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()  # each service writes its name there once it is healthy
        os.set_blocking(self._ready_w, False)  # never read after the start: a restarted service must not block
        self._demand_r, self._demand_w = os.pipe()  # the monitor's needs (nodepilot/demand.py)
        os.set_blocking(self._demand_r, False)
        self.demand = DemandLedger()
        self._retiring: set[str] = set()  # asked to retire, not ended yet
        self._spawned: set[str] = set()  # started at least once
        self._given_up: set[str] = set()  # kept dying (RestartPolicy): not started again
        self._spawn_retry_at: float | None = None  # when to try again to start a service needed (no fork)

    # --- start --------------------------------------------------------------------------
    def prepare(self) -> None:
        run = self.config.make_dirs()
        if not self.config.redis_url:  # it starts while we import below
            self.redis = spawn_pilot_redis(run)
            self.config.redis_url = self.redis.url
        self.config.save()
        os.environ.setdefault("NODEPILOT_LAUNCHED_AT", str(time.time()))
        # the monitor is built here, before the first fork (its modules were imported while the command line was
        # read: nodepilot/boot.py): what the launcher makes after a fork lands on pages it shares with its children,
        # which the kernel then copies. The others build themselves once forked (``_service_main``): the runner
        # while the monitor asks for the first job, each on-demand service when it is needed, its modules private
        # to it and gone when it retires (docs/memory.md)
        self.build("monitor")
        if self.config.server.startswith("https"):
            from nodepilot.panda.api_v1 import tls_context

            tls_context()  # built once, shared by the forked monitor
        import_first_use_modules()
        if self.redis is not None:
            self.redis.wait_ready()
            self._redis_fd = _pidfd(self.redis.process.pid)

    def build(self, name: str) -> Service:
        """Import, instantiate and build a service's app and HTTP settings once: in the launcher for the monitor
        (``prepare``), in its own forked process for the others."""
        instance = self.instances.get(name)
        if instance is None:
            from nodepilot.registry import service_class

            instance = service_class(name)(self.config)
            instance.ready_fd = self._ready_w
            if name == "monitor":
                instance.demand_fd = self._demand_w
            _ = instance.http_config  # the app with it
            self.instances[name] = instance
        return instance

    def spawn(self, name: str) -> None:
        proc = self.ctx.Process(target=_service_main,
                                args=(lambda: self.build(name), (self._demand_r,), name in self._spawned),
                                name=f"nodepilot-{name}")
        gc.freeze()  # everything made so far stays out of the child's collections (they would write to its pages)
        # the child keeps our signals blocked until it can hold them for its service (see _service_main)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, RETIRE))
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.procs[name] = proc
        self._spawned.add(name)
        self._retiring.discard(name)
        log.debug("started %s (pid %s)", name, proc.pid)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Until every service said it is healthy (serving, and Redis answers: what /healthz tells), woken by
        their word or by a death, never polling; the monitor may be done already (no job)."""
        deadline = time.monotonic() + timeout
        pending = set(EAGER)
        while pending:  # bounded start-up wait
            for name in list(pending):
                proc = self.procs[name]
                if proc.is_alive():
                    continue
                if name == "monitor":  # the pilot may be done already (no job)
                    pending.discard(name)
                    continue
                proc.join()
                if not self._restart(name, proc.exitcode):
                    raise RuntimeError(f"{name} keeps dying during start-up (exit {proc.exitcode})")
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            handles = [self._ready_r, self._demand_r, *(self.procs[name].sentinel for name in pending)]
            ready = multiprocessing.connection.wait(handles, timeout=left)
            if self._demand_r in ready:  # a job's first step may need a service already
                self.on_demand()
            if self._ready_r in ready:
                pending.difference_update(os.read(self._ready_r, 4096).decode().split())
        if pending:
            raise RuntimeError(f"not healthy within {timeout:.0f} s: {', '.join(sorted(pending))}")

    # --- supervise ----------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        os.write(self._wake_w, bytes([signum]))

    def catch_signals(self) -> None:
        """From the very start: a signal is kept in the wake pipe until ``supervise`` forwards it."""
        os.set_blocking(self._wake_w, False)
        for signum in FORWARDED:
            signal.signal(signum, self._on_signal)

    def supervise(self) -> int:
        """Block until the monitor ends; restart others that die; forward signals."""
        while True:
            monitor = self.procs["monitor"]
            handles: list[Any] = [p.sentinel for p in self.procs.values()] + [self._wake_r, self._demand_r]
            if self._redis_fd is not None:
                handles.append(self._redis_fd)
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            if self._spawn_retry_at is not None:  # a service needed could not be started: try again then
                timeout = max(0.0, min(timeout if timeout is not None else SPAWN_RETRY_S,
                                       self._spawn_retry_at - time.monotonic()))
            ready = multiprocessing.connection.wait(handles, timeout=timeout)
            if self._spawn_retry_at is not None and time.monotonic() >= self._spawn_retry_at:
                self._start_needed()
            if not ready and self.stop_deadline is not None:
                log.error("graceful stop took longer than %.0f s: killing", GRACEFUL_STOP_BUDGET)
                return exitcodes.SIGNALLED + (self.signal_received or signal.SIGTERM)
            if self._wake_r in ready:
                for signum in os.read(self._wake_r, 64):
                    self.forward(signum)
            if self._demand_r in ready:
                self.on_demand()
            if self._redis_fd is not None and self._redis_fd in ready and not self._redis_died():
                return exitcodes.SERVICES
            if not monitor.is_alive():
                monitor.join()
                code = monitor.exitcode
                if code is not None and code >= 0 and code != exitcodes.INTERNAL and code < 70:
                    return code
                if code is not None and code >= exitcodes.SIGNALLED and self.signal_received:
                    return code
                self.on_demand()  # what the dead monitor said last, then forgotten: the new one says its own
                self.demand.forget()
                self._retire([name for name in ON_DEMAND if name in self.procs])
                if not self._restart("monitor", code):
                    return exitcodes.SERVICES
            for name, proc in list(self.procs.items()):
                if name != "monitor" and not proc.is_alive():
                    proc.join()
                    if name in self._retiring:
                        self._retired(name, proc.exitcode)
                    elif not self._restart(name, proc.exitcode):  # it keeps dying: given up, the pilot stops
                        del self.procs[name]  # (its end, waited on again, would spin this loop)
                        self._given_up.add(name)
                        self.forward(signal.SIGTERM)

    # --- on demand (nodepilot/demand.py) ----------------------------------------------------
    def on_demand(self) -> None:
        """Read what the monitor needs now: start what it needs, retire what it no longer needs."""
        released: set[str] = set()
        while True:  # all it said (bounded by what the pipe holds)
            try:
                data = os.read(self._demand_r, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            released |= self.demand.feed(data)
        self._start_needed()
        self._retire([name for name in released if name in self.procs and not self.demand.wanted(name)])

    def _start_needed(self) -> None:
        """Start every service needed that is not running; one that cannot be started now (no fork: memory,
        process limit) is tried again SPAWN_RETRY_S later (its request waits in its stream meanwhile)."""
        self._spawn_retry_at = None
        for name in ON_DEMAND:
            if self.demand.wanted(name) and name not in self.procs and name not in self._given_up:
                try:
                    self.spawn(name)
                except OSError as exc:
                    log.error("cannot start %s: %s (trying again in %.0f s)", name, exc, SPAWN_RETRY_S)
                    self._spawn_retry_at = time.monotonic() + SPAWN_RETRY_S

    def _retire(self, names: list[str]) -> None:
        for name in names:
            proc = self.procs[name]
            if name in self._retiring or not proc.pid:
                continue
            self._retiring.add(name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, RETIRE)

    def _retired(self, name: str, exitcode: int | None) -> None:
        """``name`` ended after it was asked to retire; started again at once if it is needed again."""
        del self.procs[name]
        self._retiring.discard(name)
        (log.debug if exitcode == 0 else log.warning)("%s retired (exit %s)", name, exitcode)
        with contextlib.suppress(FileNotFoundError):  # gone with a service that did not end cleanly
            self.config.socket_path(name).unlink()
        self._start_needed()

    def forward(self, signum: int) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            self.stop_deadline = time.monotonic() + GRACEFUL_STOP_BUDGET
        self._send(signum)

    def _send(self, signum: int) -> None:
        monitor = self.procs.get("monitor")
        if monitor is not None and monitor.is_alive() and monitor.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor.pid, signum)

    def _restart(self, name: str, exitcode: int | None) -> bool:
        if not self.policy.allow(name, exitcode):
            return False
        if name == "redis":
            return self._restart_redis()
        self.spawn(name)
        if name == "monitor" and self.signal_received is not None:
            self._send(self.signal_received)  # the dead monitor never acted on it
        return True

    def _redis_died(self) -> bool:
        """The embedded Redis ended: start it again (False: it cannot be kept alive)."""
        assert self.redis is not None and self._redis_fd is not None
        os.close(self._redis_fd)
        self._redis_fd = None
        return self._restart("redis", self.redis.process.wait())

    def _restart_redis(self) -> bool:
        assert self.redis is not None
        if not restart_redis(self.redis):
            return False
        self._redis_fd = _pidfd(self.redis.process.pid)
        return True

    # --- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        if self._redis_fd is not None:
            os.close(self._redis_fd)
            self._redis_fd = None
        if self.redis is not None:
            self.redis.stop()
        for name in SERVICES:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path(name).unlink()

    def run(self) -> int:
        self.catch_signals()
        try:
            self.prepare()
            for name in EAGER:
                self.spawn(name)
        except (RedisStartError, OSError) as exc:
            log.error("cannot start: %s", exc)
            self.stop()
            return exitcodes.SERVICES
        finally:
            gc.enable()  # off while the start-up loaded its modules (nodepilot/cli.py)
        try:
            self.wait_healthy()
            return self.supervise()
        except RuntimeError as exc:
            log.error("%s", exc)
            return exitcodes.SERVICES
        finally:
            self.stop()
