"""Start, supervise and stop the pilot: an embedded Redis and the four services.

Services run as separate processes forked from the launcher after their code is imported
once (start-up in milliseconds; shared pages keep memory low). Each gets its own process
group, so a Ctrl-C reaches the launcher only, which turns it into the monitor's graceful
stop; the others stop when the monitor is done. A service that dies is restarted (bounded).
The monitor's exit code is the pilot's.
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
from pathlib import Path
from typing import Any

from nodepilot import exitcodes
from nodepilot.config import SERVICES, PilotConfig
from nodepilot.http import uds_client
from nodepilot.proc import die_with_parent
from nodepilot.redis_server import EmbeddedRedis, RedisStartError, spawn_redis
from nodepilot.service import Service, run_instance

log = logging.getLogger("nodepilot.launcher")

MAX_RESTARTS = 5
HEALTH_TIMEOUT = 30.0
STOP_GRACE = 10.0
GRACEFUL_STOP_BUDGET = 120.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGXCPU, signal.SIGBUS)


def _service_main(instance: Service) -> None:
    """Entry of a forked service process: runs the launcher's pristine copy of the service."""
    os.setpgid(0, 0)
    die_with_parent()
    for signum in FORWARDED:  # kept until the service's own handlers are in place, then replayed
        signal.signal(signum, lambda signum, _frame: instance.early_signals.append(signum))
    sys.exit(run_instance(instance))


class Launcher:
    def __init__(self, config: PilotConfig) -> None:
        self.config = config
        self.redis: EmbeddedRedis | None = None
        self.procs: dict[str, multiprocessing.Process] = {}
        self.instances: dict[str, Service] = {}
        self.restarts: dict[str, int] = dict.fromkeys(SERVICES, 0)
        self.ctx = multiprocessing.get_context("fork")
        self.signal_received: int | None = None
        self.stop_deadline: float | None = None
        self._wake_r, self._wake_w = os.pipe()

    # --- start --------------------------------------------------------------------------
    def prepare(self) -> None:
        run = Path(self.config.run_dir)
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(run, 0o700)
        Path(self.config.work_dir).mkdir(parents=True, exist_ok=True)
        if not self.config.redis_url:
            self.redis = spawn_redis(run / "redis")  # starts while we import below
            self.config.redis_url = self.redis.url
        self.config.save()
        os.environ.setdefault("NODEPILOT_LAUNCHED_AT", str(time.time()))
        from nodepilot.registry import service_class

        # import, instantiate and build each service's app once here: forked children share
        # these pages (an app alone is ~8 MB private per process when built after the fork)
        for name in SERVICES:
            instance = service_class(name)(self.config)
            _ = instance.app
            self.instances[name] = instance
        if self.config.server.startswith("https"):
            from nodepilot.panda.api_v1 import tls_context

            tls_context()  # built once, shared by the forked monitor
        if self.redis is not None:
            self.redis.wait_ready()
        gc.freeze()

    def spawn(self, name: str) -> None:
        proc = self.ctx.Process(target=_service_main, args=(self.instances[name],), name=f"nodepilot-{name}")
        proc.start()
        self.procs[name] = proc
        log.debug("started %s (pid %s)", name, proc.pid)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = set(SERVICES)
        while pending and time.monotonic() < deadline:  # bounded start-up wait
            for name in list(pending):
                proc = self.procs[name]
                if not proc.is_alive():
                    if name == "monitor":  # the pilot may be done already (no job)
                        pending.discard(name)
                        continue
                    proc.join()
                    if not self._restart(name, proc.exitcode):
                        raise RuntimeError(f"{name} keeps dying during start-up (exit {proc.exitcode})")
                    continue
                sock = self.config.socket_path(name)
                if sock.exists():
                    with contextlib.suppress(Exception), uds_client(sock, timeout=2) as client:
                        if client.get("/healthz").status_code == 200:
                            pending.discard(name)
            if pending:
                time.sleep(0.01)
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
            handles: list[Any] = [p.sentinel for p in self.procs.values()] + [self._wake_r]
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            ready = multiprocessing.connection.wait(handles, timeout=timeout)
            if not ready and self.stop_deadline is not None:
                log.error("graceful stop took longer than %.0f s: killing", GRACEFUL_STOP_BUDGET)
                return exitcodes.SIGNALLED + (self.signal_received or signal.SIGTERM)
            if self._wake_r in ready:
                for signum in os.read(self._wake_r, 64):
                    self.forward(signum)
            if not monitor.is_alive():
                monitor.join()
                code = monitor.exitcode
                if code is not None and code >= 0 and code != exitcodes.INTERNAL and code < 70:
                    return code
                if code is not None and code >= exitcodes.SIGNALLED and self.signal_received:
                    return code
                if not self._restart("monitor", code):
                    return exitcodes.SERVICES
            for name, proc in list(self.procs.items()):
                if name != "monitor" and not proc.is_alive():
                    proc.join()
                    if not self._restart(name, proc.exitcode):
                        self.forward(signal.SIGTERM)

    def forward(self, signum: int) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            self.stop_deadline = time.monotonic() + GRACEFUL_STOP_BUDGET
        monitor = self.procs.get("monitor")
        if monitor is not None and monitor.is_alive() and monitor.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor.pid, signum)

    def _restart(self, name: str, exitcode: int | None) -> bool:
        if self.restarts[name] >= MAX_RESTARTS:
            log.error("%s died (exit %s) %d times: giving up", name, exitcode, self.restarts[name])
            return False
        self.restarts[name] += 1
        log.warning("%s died (exit %s): restarting (%d/%d)", name, exitcode, self.restarts[name], MAX_RESTARTS)
        self.spawn(name)
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
        if self.redis is not None:
            self.redis.stop()
        for name in SERVICES:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path(name).unlink()

    def run(self) -> int:
        self.catch_signals()
        try:
            self.prepare()
        except (RedisStartError, OSError) as exc:
            log.error("cannot start: %s", exc)
            self.stop()
            return exitcodes.SERVICES
        try:
            for name in SERVICES:
                self.spawn(name)
            self.wait_healthy()
            return self.supervise()
        except RuntimeError as exc:
            log.error("%s", exc)
            return exitcodes.SERVICES
        finally:
            self.stop()
