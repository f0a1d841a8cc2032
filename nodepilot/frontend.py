"""The front-end pilot (``nodepilot frontend``): the one process that talks to the PanDA server for compute
nodes that may not. It serves the relay requests workers put on its Redis (``nodepilot/panda/relay.py``),
forwards them to the server and answers; job updates are stored in its outbox (Redis) and forwarded in
order until the server took them (``services/monitor/updates.Outbox``), the server's commands going back to
the worker that sent the update. Event-service jobs may be shared by several workers (``nodepilot/jumbo.py``).

It can also start the workers: ``--launch local`` (N processes here) or ``--launch slurm`` (``srun`` on the
allocation's nodes, ``nodepilot/slurm.py``); it then ends when they all have, once their updates are out.
It is a Service like the pilot's own: ``/healthz``, ``/status`` and ``/metrics`` on ``<run>/frontend.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodepilot import bus, exitcodes, jumbo
from nodepilot.config import PilotConfig
from nodepilot.jumbo import JumboJobs
from nodepilot.outbox import Outbox
from nodepilot.panda import relay
from nodepilot.panda.client import ServerClient, UpdateReply
from nodepilot.panda.connect import make_client
from nodepilot.panda.errors import ServerError
from nodepilot.service import Service

log = logging.getLogger(__name__)

WORKER_FIELD = "_relay_worker"  # kept with an update in the outbox, never sent
STORED_TTL_S = 86400
LAUNCHES = ("none", "local", "slurm")
GRACEFUL_S = 110.0  # workers told to stop get this long (batch systems kill ~2 min after TERM)
FLUSH_S = 60.0


@dataclass
class FrontendSettings:
    launch: str = "none"  # none | local | slurm
    workers: int = 1  # local: how many
    cores_per_worker: int = 0  # slurm: 0 = one worker per node
    jumbo: int = 1  # an event-service job is shared by up to this many workers
    slots: str = "1"  # local workers' --slots
    worker_args: list[str] = field(default_factory=list)


@dataclass
class Worker:
    worker_id: str
    command: list[str]
    # added to the worker's environment: secrets go there, never on its command line (``ps`` shows that to all)
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    code: int | None = None


class _Forwarding:
    """The outbox's view of the server: an update without the front-end's own fields."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        return await self.client.update_job({k: v for k, v in fields.items() if k != WORKER_FIELD})


def worker_command(config: PilotConfig, worker_id: str, slots: str, extra: list[str]) -> list[str]:
    """``nodepilot start`` of one worker: in-process, every server call through this front-end's Redis
    (its URL, with the password, in the worker's environment: ``worker_env``)."""
    work = Path(config.work_dir) / worker_id
    command = [sys.executable, "-m", "nodepilot", "start", "--in-process", "--api", "relay",
               "--worker-id", worker_id, "--queue", config.queue,
               "--site", config.site or config.queue, "--job-label", config.job_label, "--workdir", str(work),
               "--se-dir", config.se_dir, "--slots", slots]
    for option, value in (("--queuedata", config.queuedata_file), ("--pilot-user", config.pilot_user),
                          ("--resource-type", config.resource_type), ("--queuedata-url", config.queuedata_url),
                          ("--queuedata-dump", config.queuedata_dump), ("--storagedata-url", config.storagedata_url)):
        if value:
            command += [option, value]
    if config.lifetime_s:
        command += ["--lifetime", f"{config.lifetime_s:g}"]
    return [*command, *extra]


def worker_env(config: PilotConfig) -> dict[str, str]:
    """What a worker gets in its environment: the front-end's Redis URL (``--redis-url``'s variable)."""
    return {"NODEPILOT_REDIS_URL": config.redis_url}


def plan_workers(config: PilotConfig, settings: FrontendSettings) -> list[Worker]:
    """The workers to start (ValueError when the launch cannot be done here)."""
    if settings.launch == "local":
        return [Worker(f"{config.node}-w{k}", worker_command(config, f"{config.node}-w{k}", settings.slots,
                                                            settings.worker_args), worker_env(config))
                for k in range(1, settings.workers + 1)]
    if settings.launch == "slurm":
        from nodepilot.slurm import Allocation, srun_command

        if config.redis_url.startswith("unix:"):
            raise ValueError("--launch slurm: the workers cannot reach a Unix socket; give --redis-url "
                             "redis://:<password>@<front-end host>:<port>/0")
        allocation = Allocation.from_env()
        if allocation is None:
            raise ValueError("--launch slurm outside a Slurm allocation (no SLURM_JOB_ID / SLURM_JOB_NODELIST)")
        per_node = settings.cores_per_worker <= 0
        workers = []
        for node, k, cores in allocation.workers(settings.cores_per_worker):
            worker_id = f"{node}-{k}"
            command = worker_command(config, worker_id, "auto" if per_node else str(cores), settings.worker_args)
            # srun passes its environment on to the task (--export=ALL, Slurm's default)
            workers.append(Worker(worker_id, srun_command(node, command, cores, per_node), worker_env(config)))
        return workers
    return []


class Frontend(Service):
    name = "frontend"

    def __init__(self, config: PilotConfig, settings: FrontendSettings) -> None:
        super().__init__(config)
        self.settings = settings
        self.client = make_client(config)
        self.outbox = Outbox(self.redis, _Forwarding(self.client), on_reply=self.on_server_reply)  # type: ignore[arg-type]
        self.jumbo = JumboJobs(self.redis, settings.jumbo)
        # one acquisition at a time: a worker asking while another's job is being fetched must then get a
        # share of it (a jumbo job), not an empty answer from the server
        self._acquiring = asyncio.Lock()
        self.workers_planned = plan_workers(config, settings)
        self.signal: int | None = None
        self._signalled = asyncio.Event()
        self.consumer: bus.Consumer | None = None
        self.methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "acquire_job": self.acquire_job, "update_job": self.update_job,
            "acquire_event_ranges": self.acquire_event_ranges, "update_event_ranges": self.update_event_ranges,
            "get_event_range_statuses": self.get_event_range_statuses,
            "update_worker_status": self.update_worker_status, "update_worker_node": self.update_worker_node,
            "update_worker_node_gpu": self.update_worker_node_gpu,
        }

    # --- the service -----------------------------------------------------------------------
    def workers(self) -> list[Coroutine[Any, Any, Any]]:
        return [self._consume(), self.outbox.run()]

    def main(self) -> Coroutine[Any, Any, int]:
        return self._main()

    def on_signal(self, signum: int) -> None:
        """Workers of ours are told (they end their jobs and report through us); we end after them."""
        if self.signal is None:
            self.signal = signum
            log.warning("signal %s: stopping%s", signum, " the workers first" if self.workers_planned else "")
        for worker in self.workers_planned:
            if worker.process is not None and worker.code is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)
        self._signalled.set()

    async def status(self) -> dict[str, Any]:
        return {"workers": [{"id": w.worker_id, "pid": w.process.pid if w.process else None, "exit_code": w.code}
                            for w in self.workers_planned],
                "jumbo_open": sorted(int(x) for x in await self.redis.smembers(jumbo.OPEN)),
                "requests_handled": self.consumer.handled if self.consumer else 0,
                "updates_delivered": self.outbox.delivered}

    async def _consume(self) -> None:
        self.consumer = bus.Consumer(self.redis, relay.REQUESTS, "frontend", "frontend", self.handle,
                                     concurrency=64, retry_s=5.0)
        await self.consume_or_stop(self.consumer)

    async def _main(self) -> int:
        try:
            if self.workers_planned:
                code = await self._run_workers()
            else:
                await self._signalled.wait()
                code = exitcodes.OK
            try:
                await asyncio.wait_for(self.outbox.flush(), FLUSH_S)
            except TimeoutError:
                log.error("updates not all delivered within %.0f s: they stay in Redis for the next front-end",
                          FLUSH_S)
                code = code or exitcodes.UPDATE_LOST
            return exitcodes.SIGNALLED + self.signal if self.signal else code
        finally:
            await self.client.aclose()

    async def _run_workers(self) -> int:
        for worker in self.workers_planned:
            log.info("starting worker %s: %s", worker.worker_id, " ".join(worker.command))
            worker.process = await asyncio.create_subprocess_exec(*worker.command, stdin=asyncio.subprocess.DEVNULL,
                                                                  env={**os.environ, **worker.env})
        waits = [asyncio.create_task(self._wait(worker)) for worker in self.workers_planned]
        done = asyncio.gather(*waits)
        signalled = asyncio.create_task(self._signalled.wait())
        await asyncio.wait([done, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():  # told to stop: the workers were told too
            finished, _ = await asyncio.wait([done], timeout=GRACEFUL_S)
            if not finished:
                for worker in self.workers_planned:
                    if worker.code is None and worker.process is not None:
                        log.error("worker %s did not stop within %.0f s: killing it", worker.worker_id, GRACEFUL_S)
                        with contextlib.suppress(ProcessLookupError):
                            worker.process.kill()
                await done
        signalled.cancel()
        log.info("workers ended: %s", ", ".join(f"{w.worker_id}={w.code}" for w in self.workers_planned))
        codes = [exitcodes.SIGNALLED - c if c < 0 else c for w in self.workers_planned if (c := w.code or 0)]
        return codes[0] if codes else exitcodes.OK

    @staticmethod
    async def _wait(worker: Worker) -> None:
        assert worker.process is not None
        worker.code = await worker.process.wait()

    # --- relay requests ----------------------------------------------------------------------
    async def handle(self, entry_id: str, message: dict[str, Any]) -> None:
        request_id, worker, method, args = (message.get("id"), message.get("worker"), message.get("method"),
                                            message.get("args"))
        if not isinstance(request_id, str) or not request_id:
            log.error("relay request %s without an id dropped: %.300r", entry_id, message)
            return
        if not isinstance(worker, str) or method not in self.methods or not isinstance(args, dict):
            log.error("malformed relay request %s refused: %.300r", entry_id, message)
            await self._answer(request_id, {"ok": False, "error": "malformed relay request", "retryable": False})
            return
        if await self._expired(entry_id, message.get("timeout_s")):
            log.warning("relay request %s (%s of %s) came after its caller gave up: dropped", entry_id, method, worker)
            return
        try:
            answer = {"ok": True, "value": await self.methods[method](worker, request_id, **args)}
        except ServerError as exc:
            answer = {"ok": False, "error": str(exc), "retryable": exc.retryable, "code": exc.code,
                      "refused": exc.refused}
        except Exception as exc:  # a bad argument or a bug: the worker is told, the front-end goes on
            log.exception("relay request %s (%s of %s) failed", entry_id, method, worker)
            answer = {"ok": False, "error": f"the front-end failed: {exc!r}", "retryable": False}
        await self._answer(request_id, answer)

    async def _answer(self, request_id: str, answer: dict[str, Any]) -> None:
        key = relay.reply_key(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, json.dumps(answer, default=str))
            pipe.expire(key, relay.REPLY_TTL_S)
            await pipe.execute()

    async def _expired(self, entry_id: str, timeout_s: Any) -> bool:
        """Older than the caller's wait (by the Redis clock, which stamped the entry: no clock skew)."""
        if not isinstance(timeout_s, int | float):
            return False
        seconds, micros = await self.redis.time()
        age_ms = seconds * 1000 + micros // 1000 - int(entry_id.split("-")[0])
        return age_ms > timeout_s * 1000

    async def acquire_job(self, worker: str, _request_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self._acquiring:
            share = await self.jumbo.take_share(worker)
            if share is not None:
                log.info("worker %s: a share of jumbo job %s", worker, share.get("PandaID"))
                return share
            raw = await self.client.acquire_job(params)
            if raw is None:
                return None
            log.info("worker %s: job %s", worker, raw.get("PandaID"))
            return await self.jumbo.open(raw, worker)

    async def update_job(self, worker: str, request_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Stored, then answered; forwarded by the outbox (a retried request is not stored twice)."""
        stored = f"relay:stored:{request_id}"
        if not await self.redis.exists(stored):
            job_id = bus.job_id_of(fields.get("jobId"))
            forward: dict[str, Any] | None = fields
            if job_id is not None:
                forward = await self.jumbo.update(job_id, worker, fields)
                if forward is None:
                    log.info("job %s: final update of worker %s held until every share ended", job_id, worker)
                elif forward is not fields:
                    log.info("job %s: every share ended: one merged final update", job_id)
            if forward is not None:
                await self.outbox.put({**forward, WORKER_FIELD: worker})
            await self.redis.set(stored, 1, ex=STORED_TTL_S)
        return {"status_code": 0, "command": None, "stored": True}

    async def on_server_reply(self, fields: dict[str, Any], reply: UpdateReply) -> None:
        """A server command goes to the worker that sent the update (to every share of a jumbo job)."""
        if not reply.command:
            return
        job_id = bus.job_id_of(fields.get("jobId"))
        if job_id is None:
            return
        targets = await self.jumbo.workers(job_id) or [fields.get(WORKER_FIELD) or ""]
        for worker in filter(None, targets):
            log.info("job %s: server command %s for worker %s", job_id, reply.command, worker)
            key = relay.commands_key(worker)
            await self.redis.rpush(key, json.dumps({"jobId": job_id, "command": reply.command}))
            await self.redis.expire(key, STORED_TTL_S)

    async def acquire_event_ranges(self, _worker: str, _request_id: str, job_id: int, jobset_id: int,
                                   task_id: int | None, n_ranges: int) -> list[dict[str, Any]]:
        return await self.client.acquire_event_ranges(job_id, jobset_id, task_id, n_ranges)

    async def update_event_ranges(self, _worker: str, _request_id: str, ranges: list[dict[str, Any]],
                                  version: int = 1) -> dict[str, Any]:
        return await self.client.update_event_ranges(ranges, version)

    async def get_event_range_statuses(self, _worker: str, _request_id: str, job_id: int,
                                       task_id: int) -> dict[str, dict[str, Any]]:
        lookup = getattr(self.client, "get_event_range_statuses", None)
        if lookup is None:  # a dialect without the call: the worker cannot look ranges up
            raise ServerError(f"{type(self.client).__name__} cannot look event ranges up")
        return await lookup(job_id, task_id)

    async def update_worker_status(self, _worker: str, _request_id: str, worker_id: str, harvester_id: str,
                                   status: str, node_id: str | None = None) -> None:
        await self.client.update_worker_status(worker_id, harvester_id, status, node_id)

    async def update_worker_node(self, _worker: str, _request_id: str, inventory: dict[str, Any]) -> None:
        await self.client.update_worker_node(inventory)

    async def update_worker_node_gpu(self, _worker: str, _request_id: str, gpu: dict[str, Any]) -> None:
        await self.client.update_worker_node_gpu(gpu)


def run_frontend(config: PilotConfig, settings: FrontendSettings) -> int:
    """The front-end until it is stopped (or its workers ended); its exit code."""
    from nodepilot.rundir import RunDirBusy, lock_run_dir

    if settings.launch not in LAUNCHES:
        log.error("--launch must be one of %s, not %r", ", ".join(LAUNCHES), settings.launch)
        return exitcodes.USAGE
    try:  # one pilot per run dir, as for nodepilot start (nodepilot/rundir.py)
        run_lock = lock_run_dir(Path(config.run_dir))
    except (RunDirBusy, OSError) as exc:
        log.error("%s", exc)
        return exitcodes.USAGE
    try:
        return _run_frontend(config, settings)
    finally:
        run_lock.release()


def _run_frontend(config: PilotConfig, settings: FrontendSettings) -> int:
    from nodepilot.redis_server import RedisStartError, spawn_redis
    from nodepilot.service import run_instance

    run = config.make_dirs()
    embedded = None
    if not config.redis_url:
        try:
            embedded = spawn_redis(run / "redis")
            embedded.wait_ready()
        except (RedisStartError, OSError) as exc:
            log.error("cannot start Redis: %s", exc)
            return exitcodes.SERVICES
        config.redis_url = embedded.url
    config.save()  # pilot.json: the relay URL for workers started by hand
    try:
        try:
            frontend = Frontend(config, settings)
        except ValueError as exc:
            log.error("%s", exc)
            return exitcodes.USAGE
        for signum in (signal.SIGTERM, signal.SIGINT):  # until the loop's handlers exist
            signal.signal(signum, lambda signum, _frame: frontend.early_signals.append(signum))
        return run_instance(frontend)
    finally:
        if embedded is not None:
            embedded.stop()
