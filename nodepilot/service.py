"""What every service shares: an ASGI app on its Unix socket with /healthz and /status,
async workers beside it, one Redis client, and a clean stop on SIGTERM/SIGINT.

A service's process ends when its stop event is set or its main worker returns; the value
the main worker returns is the process's exit code (the monitor's is the pilot's).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.demand import RETIRE
from nodepilot.errors import clip_diag
from nodepilot.logs import setup_logging
from nodepilot.metrics import register_common
from nodepilot.webapi import api_app, json_route, server_config

log = logging.getLogger(__name__)

STOP_WAIT_S = 3.0
# what httpx imports only on a client's first connection (httpcore, its anyio backend, the CA bundle's
# locator) and uvicorn on loading its settings (its HTTP/1.1 protocol): imported by the launcher before it forks,
# they are not imported again by each service on the way to the first payload, and their pages are shared
FIRST_USE_MODULES = ("httpcore", "httpcore._backends.anyio", "anyio._backends._asyncio", "certifi",
                     "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.off")


def import_first_use_modules() -> None:
    for name in FIRST_USE_MODULES:
        importlib.import_module(name)


class Service:
    name = "service"
    stop_wait_s = STOP_WAIT_S  # how long its workers get to end once it is stopped (within the launcher's grace)
    threads = 8  # threads it may keep busy at once (asyncio.to_thread): its share of the loop's default pool

    def __init__(self, config: PilotConfig) -> None:
        self.config = config
        self.redis = bus.connect(config.redis_url)
        self.stopping = asyncio.Event()
        self.stop_signal: int | None = None
        self.started = time.time()
        self._app: Starlette | None = None
        self._http_config: uvicorn.Config | None = None
        self.early_signals: list[int] = []  # arrived before the event loop's handlers were set
        self.owns_loop = True  # False in-process: the loop and its thread pool are shared (nodepilot/inprocess.py)
        self.ready_fd: int | None = None  # the launcher's: its name is written there once it serves and Redis answers
        self.demand_fd: int | None = None  # the monitor's: what it needs goes there (nodepilot/demand.py)
        self.retiring = False  # asked to end once it holds no work (nodepilot/demand.py)
        self._consumers: list[bus.Consumer] = []
        self.metrics = CollectorRegistry()  # a service registers its own collectors here; /metrics shows them

    # --- what a service defines ----------------------------------------------------
    def main(self) -> Coroutine[Any, Any, int] | None:
        """The main worker: the service ends when it returns (None: run until stopped)."""
        return None

    def workers(self) -> list[Coroutine[Any, Any, Any]]:
        """Background workers that run until the service stops."""
        return []

    def routes(self) -> list[BaseRoute]:
        """Routes beyond /healthz, /status and /metrics (nodepilot/webapi.py)."""
        return []

    def add_metrics(self, registry: CollectorRegistry) -> None:
        """Metrics beyond the common ones (nodepilot/metrics.py); read at scrape time where possible."""

    async def status(self) -> dict[str, Any]:
        return {}

    async def answer_failure(self, message: dict[str, Any], exc: BaseException) -> None:
        """Answer a request whose handler raised (bus.Consumer's ``on_error``): an error answer on the
        job's stream, so the monitor never waits for a request that vanished. Default: none."""

    def internal_error(self, what: str, exc: BaseException) -> str:
        """The diag of a request this service failed on by a bug of its own."""
        return clip_diag(f"{self.name} internal error in {what}: {exc!r}")

    def busy(self) -> bool:
        """Whether it holds work now (a request in hand); a service whose work outlives its requests says so too,
        and calls ``settled`` when that work ends."""
        return any(consumer.busy() for consumer in self._consumers)

    def track(self, consumer: bus.Consumer) -> bus.Consumer:
        """``consumer``'s requests are this service's work: a retiring service ends when none is in hand."""
        self._consumers.append(consumer)
        consumer.on_settled = self.settled
        return consumer

    def settled(self) -> None:
        """A piece of work ended: a retiring service that holds none any more ends now (what its consumers read
        from now on is left pending, served by the next instance: it is started as soon as it is needed)."""
        if self.retiring and not self.busy():
            for consumer in self._consumers:
                consumer.closed = True
            self.stopping.set()

    def retire(self) -> None:
        """The launcher needs it no more: it ends once it holds no work (new requests read meanwhile are served)."""
        self.retiring = True
        self.settled()

    async def consume_or_stop(self, consumer: bus.Consumer) -> None:
        """Serve a work stream; if it cannot be read, stop (the launcher starts a fresh instance)."""
        self.track(consumer)
        try:
            await consumer.run()
        except Exception:
            log.exception("%s cannot read %s: stopping (to be restarted)", self.name, consumer.stream)
            self.stopping.set()
        finally:
            await consumer.aclose()

    def on_signal(self, signum: int) -> None:
        """Default: stop. The monitor overrides this to end its job gracefully first."""
        self.stop_signal = signum
        self.stopping.set()

    # --- plumbing --------------------------------------------------------------------
    @property
    def app(self) -> Starlette:
        """Built once; the launcher builds it before forking so the children share its pages."""
        if self._app is None:
            self._app = self.build_app()
        return self._app

    @property
    def http_config(self) -> uvicorn.Config:
        """uvicorn's settings for this service's socket, loaded (protocol classes imported, app wrapped)
        once: the launcher loads them before forking, so no service imports or builds them on its own."""
        if self._http_config is None:
            self._http_config = server_config(self.app, uds=str(self.config.socket_path(self.name)),
                                              timeout_graceful_shutdown=2)
        return self._http_config

    def build_app(self) -> Starlette:
        async def healthz(_request: Request) -> dict[str, Any]:
            await self.redis.ping()
            return {"ok": True, "service": self.name, "pid": os.getpid()}

        async def status(_request: Request) -> dict[str, Any]:
            return {"service": self.name, "uptime_s": round(time.time() - self.started, 3),
                    **await self.status()}

        async def metrics(_request: Request) -> Response:
            return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

        register_common(self.metrics, self.name, self.started)
        self.add_metrics(self.metrics)
        return api_app([json_route("/healthz", healthz), json_route("/status", status),
                        json_route("/metrics", metrics), *self.routes()])

    async def serve(self) -> int:
        if self.owns_loop:  # in-process, one pool sized for every service is set before they start
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(self.threads, self.name))
        main = self.main()
        main_task = asyncio.create_task(main) if main is not None else None
        await asyncio.sleep(0)  # the main worker's first request goes out before the app is built
        sock = self.config.socket_path(self.name)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        server = QuietServer(self.http_config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                       signal.SIGXCPU, signal.SIGBUS):
            loop.add_signal_handler(signum, self.on_signal, signum)
        loop.add_signal_handler(RETIRE, self.retire)
        for signum in self.early_signals:
            if signum == RETIRE:
                self.retire()
            else:
                self.on_signal(signum)

        background = [asyncio.create_task(w) for w in self.workers()]
        http = asyncio.create_task(server.serve())
        if self.ready_fd is not None:
            background.append(asyncio.create_task(self._announce_ready(server)))
        stop = asyncio.create_task(self.stopping.wait())
        waiting = {stop, http} | ({main_task} if main_task else set())
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if main_task is not None and main_task in done:
            code = _result_code(main_task)
        elif main_task is not None:
            # stopped from outside: give the main worker its chance to end cleanly
            main_task.cancel()
            with contextlib.suppress(BaseException):
                await main_task
        for task in background:
            task.cancel()
        if background:
            # bounded: a cancelled blocking XREADGROUP in redis-py may not return (see bus.Consumer)
            await asyncio.wait(background, timeout=self.stop_wait_s)
        stop.cancel()
        server.request_exit()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(http, 5)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        return code

    async def _announce_ready(self, server: QuietServer) -> None:
        """What /healthz tells, said once without being asked: the launcher waits for it instead of polling."""
        await server.up.wait()
        try:
            await self.redis.ping()  # retried by the client for a while (bus.connect)
        except Exception as exc:
            log.warning("%s not healthy: Redis does not answer (%s)", self.name, exc)
            return
        assert self.ready_fd is not None
        with contextlib.suppress(OSError):  # a launcher gone: nobody to tell
            os.write(self.ready_fd, f"{self.name}\n".encode())


def _result_code(task: asyncio.Task[Any]) -> int:
    if task.cancelled():
        return 1
    exc = task.exception()
    if exc is not None:
        log.error("main worker failed", exc_info=exc)
        return 70  # EX_SOFTWARE
    result = task.result()
    return int(result) if isinstance(result, int) else 0


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling (the service decides what a signal means) and
    without its 10-per-second tick loop (it only refreshes the Date header): it waits for the
    stop event instead, so an idle service uses no CPU at all."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()
        self.up = asyncio.Event()  # set once it accepts connections

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()

    async def main_loop(self) -> None:
        await self._exit.wait()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's, without its fixed 0.1 s pause for connections to close when none is open: a service
        that retires between two steps of a job ends at once (nodepilot/demand.py), and so does the pilot."""
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)
            return
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        if not self.force_exit:
            await self.lifespan.shutdown()

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        return None


def run(service_cls: type[Service], config: PilotConfig) -> int:
    """Run one service to completion in this process; returns its exit code."""
    return run_instance(service_cls(config))


def run_instance(instance: Service) -> int:
    setup_logging(instance.name)
    return asyncio.run(instance.serve())
