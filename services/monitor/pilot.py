"""The pilot's outer loop: acquire a job, run it, repeat while the slot's time allows.

With ``--slots`` above one, several jobs run at once, each in its own task, sharing the node through a
resource ledger (``nodepilot/slots.py``): the loop asks the server for a job only when a slot and a core are
free, with what is free as the acquire parameters, and waits on the ledger (no polling) otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus, exitcodes, retry
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.gpu import gpu_inventory
from nodepilot.job import JobDefinitionError, log_only_job, parse_job
from nodepilot.outbox import DeliveryAbandoned, Outbox
from nodepilot.panda.client import ServerClient, UpdateReply
from nodepilot.panda.connect import make_client
from nodepilot.panda.errors import ServerError
from nodepilot.panda.http import NOT_PANDA
from nodepilot.slots import SlotLedger, job_needs, node_capacity
from nodepilot.timeutil import panda_time
from nodepilot.worker import cpu_mhz, free_disk_mb, memory_mb, node_inventory
from services.monitor import jobrun
from services.monitor.getjob import getjob_fields, timefloor_allows
from services.monitor.resume import previous_jobs
from services.monitor.timebudget import TimeBudget

log = logging.getLogger(__name__)

PILOT_DIAG_FILE = "pilot_diag.txt"  # in a rejected job's log: why the pilot could not run it

WORKER_REPORT_S = 10.0
GRACEFUL_STOP_S = 110.0  # the launcher kills everything at 120 s


class Pilot:
    def __init__(self, config: PilotConfig, r: aioredis.Redis, launched_at: float | None = None) -> None:
        self.config, self.r = config, r
        self.launched_at = launched_at or time.time()
        self.started = time.monotonic()
        self.client: ServerClient = make_client(config)
        self.outbox = Outbox(r, self.client, on_reply=self.on_reply)
        self.running: dict[int, jobrun.JobRun] = {}  # by PandaID, in start order
        self.results: list[dict[str, Any]] = []
        self.signal: int | None = None
        self.failure: DeliveryAbandoned | None = None
        self.taken = 0  # jobs acquired
        self.task_id: int | None = None  # the first job's task: later jobs ask for it (--allow-same-user)
        self._acquiring: asyncio.Task[Any] | None = None
        self._slots: set[asyncio.Task[None]] = set()
        # the first job's payload runs, or there is none: the worker's report goes then, out of its way
        self.under_way = asyncio.Event()
        self.budget = TimeBudget.of(config, self.launched_at)
        gpus = sum(int(g.get("count") or 0) for g in gpu_inventory())
        capacity, max_jobs = node_capacity(config.slots, config.work_dir, gpus=gpus)
        self.ledger = SlotLedger(capacity, max_jobs)

    @property
    def current(self) -> jobrun.JobRun | None:
        """The oldest running job (the one job of a single-slot pilot)."""
        return next(iter(self.running.values()), None)

    # --- outside events ----------------------------------------------------------------
    async def on_signal(self, signum: int) -> None:
        if self.signal is not None:
            log.warning("signal %s during the graceful stop: ignored", signum)
            return
        self.signal = signum
        log.warning("signal %s: stopping gracefully (at most %.0f s)", signum, GRACEFUL_STOP_S)
        asyncio.get_running_loop().call_later(GRACEFUL_STOP_S, self._stop_overdue, signum)
        if self._acquiring is not None:
            self._acquiring.cancel()
        await self.ledger.wake()
        for run in list(self.running.values()):
            await bus.emit(self.r, run.job.panda_id, "monitor", "signal", signum=signum)

    def _stop_overdue(self, signum: int) -> None:
        """Last resort: the graceful stop hangs (e.g. the launcher and the other services are gone)."""
        log.error("graceful stop not done within %.0f s: exiting now", GRACEFUL_STOP_S)
        os._exit(exitcodes.SIGNALLED + signum)

    async def on_reply(self, fields: dict[str, Any], reply: UpdateReply) -> None:
        command = (reply.command or "").lower()
        if command in ("", "null", "none"):
            return
        log.info("server command for job %s: %s", fields.get("jobId"), command)
        if fields.get("jobId") in self.running:
            await bus.emit(self.r, fields["jobId"], "monitor", "server_command", command=command)

    # --- the loop ------------------------------------------------------------------------
    def time_left(self) -> float:
        return self.budget.end - time.time() if self.budget else float("inf")

    async def run(self) -> int:
        sender = asyncio.create_task(self.outbox.run())
        reports = asyncio.create_task(self.report_worker("started"))  # once the first payload runs (under_way)
        try:
            await self.resume()
            return await self._loop()
        except DeliveryAbandoned as exc:
            log.error("giving up: %s (pilot error %s)", exc, ErrorCode.SERVER_COMMUNICATION)
            return exitcodes.UPDATE_LOST
        finally:
            sender.cancel()
            self.under_way.set()
            await asyncio.wait([reports], timeout=WORKER_REPORT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.report_worker("finished"), WORKER_REPORT_S)
            await self.client.aclose()

    async def report_worker(self, status: str) -> None:
        """Best effort: the node's inventory at the start, and the Harvester worker's status."""
        config = self.config
        try:
            if status == "started":
                await self.under_way.wait()
                site = config.site or config.queuedata.site or config.queue  # the command line wins
                await self.client.update_worker_node(await asyncio.to_thread(
                    node_inventory, site, config.queue, config.node, config.work_dir))
                for gpu in await asyncio.to_thread(gpu_inventory):
                    await self.client.update_worker_node_gpu({"site": site, "host_name": config.node, **gpu})
            worker_id, harvester_id = os.environ.get("HARVESTER_WORKER_ID"), os.environ.get("HARVESTER_ID")
            if worker_id and harvester_id and config.worker_status_update:
                await self.client.update_worker_status(worker_id, harvester_id, status, config.node)
        except ServerError as exc:  # never the pilot's end: the server only keeps statistics of these
            # a refusal of the pilot itself is what acquiring a job reports too: said once, there
            # and so is a server that is not PanDA (HTTP 404, 501)
            quiet = exc.refused or getattr(exc, "status", None) in NOT_PANDA
            log.log(logging.DEBUG if quiet else logging.WARNING, "worker report (%s) not delivered: %s", status, exc)
        except Exception as exc:
            log.warning("worker report (%s) not delivered: %s", status, exc)

    async def resume(self) -> None:
        """After a restart of the monitor (services/monitor/resume.py): the jobs done count, those in
        progress are run to their end."""
        for previous in await previous_jobs(self.r):
            self.under_way.set()  # a monitor started again: no first job to keep clear
            self.taken += 1
            if previous.done:
                self.record(previous.result)
            elif previous.definition is None:
                log.error("job %s: no definition in Redis: it cannot be resumed", previous.panda_id)
            else:
                log.warning("job %s: resuming it after a restart of the monitor (it was %s)", previous.panda_id,
                            previous.result.get("state", "starting"))
                await self.start_job(previous.definition, 0.0, 0.0, resumed=previous.result)

    def _stopping(self) -> bool:
        return self.signal is not None or self.failure is not None

    def _may_acquire(self) -> bool:
        if self._stopping() or (self.config.max_jobs and self.taken >= self.config.max_jobs):
            return False
        if self.budget and self.time_left() < self.budget.warn_s:  # a new job would be warned at once: drain
            log.info("not asking for more jobs: %.0f s left in the slot", self.time_left())
            return False
        return timefloor_allows(self.config.queuedata.timefloor_min, self.taken, self.launched_at)

    async def _loop(self) -> int:
        initial_setup = time.time() - self.launched_at
        code = exitcodes.OK
        while self._may_acquire():
            await self.ledger.wait_for_room(self._stopping)
            if not self._may_acquire():
                break
            t = time.monotonic()
            try:
                self._acquiring = asyncio.create_task(self.acquire())
                raw = await self._acquiring
            except asyncio.CancelledError:
                break
            except ServerError as exc:
                log.error("could not get a job: %s", exc)
                if not self.taken:
                    code = exitcodes.REFUSED if exc.refused else exitcodes.SERVER
                break
            finally:
                self._acquiring = None
            if raw is None:
                log.info("no job available%s", "" if not self.taken else " any more")
                break
            self.taken += 1
            await self.start_job(raw, time.monotonic() - t, initial_setup)
            initial_setup = 0.0
        self.under_way.set()
        await self._drain()
        if self.failure is not None:
            raise self.failure
        if code != exitcodes.OK:
            return code
        await self.outbox.flush()
        if self.signal is not None:
            return exitcodes.SIGNALLED + self.signal
        if any(not r.get("final_delivered") for r in self.results):
            return exitcodes.UPDATE_LOST
        return exitcodes.OK

    async def _drain(self) -> None:
        """The jobs running end as they would; if updates cannot be delivered any more, nothing can end well."""
        while self._slots and self.failure is None:
            await asyncio.wait(list(self._slots), return_when=asyncio.FIRST_COMPLETED)
        for task in list(self._slots):
            task.cancel()

    async def acquire(self) -> dict[str, Any] | None:
        free = self.ledger.acquire_params(self.config.resource_type)
        params = {**getjob_fields(self.config, self.task_id, self.time_left()),
                  "diskSpace": min(free_disk_mb(self.config.work_dir), free.get("diskSpace", 1 << 40),
                                   self.config.queuedata.maxwdir_mb or 1 << 40),
                  "mem": min(memory_mb(), free.get("mem", 1 << 40)), "cpu": cpu_mhz(),
                  "resourceType": free.get("resourceType") or self.config.resource_type or None}
        params = {k: v for k, v in params.items() if v is not None and v != ""}
        async def attempt(timeout: float) -> dict[str, Any] | None:
            try:
                async with asyncio.timeout(timeout):
                    return await self.client.acquire_job(params)
            except TimeoutError:
                self.under_way.set()  # no job from this attempt: the worker's report need not wait for one
                raise ServerError(f"acquire_job: no answer within {timeout:.0f} s", retryable=True) from None
            except Exception:
                self.under_way.set()
                raise

        return await retry.call(retry.ACQUIRE, attempt, "acquire_job",
                                lambda exc: isinstance(exc, ServerError) and exc.retryable)

    async def start_job(self, raw: dict[str, Any], getjob_s: float, initial_setup_s: float,
                        resumed: dict[str, Any] | None = None) -> None:
        """Reserve the job's resources (waiting for them if the server gave more than is free), then run
        it in a task of its own; returns once it started (a broken definition is rejected here)."""
        try:
            job = parse_job(raw)
        except JobDefinitionError as exc:
            await self.reject(exc, raw)
            return
        if self.task_id is None and job.task_id:
            self.task_id = job.task_id
        run = jobrun.JobRun(job, self.config, self.r, self.outbox, getjob_s, initial_setup_s, self.budget,
                            resumed=resumed)
        run.on_running = self.under_way.set
        need = self.ledger.fit(job_needs(job), f"job {job.panda_id}")
        token = await self.ledger.take(need, self._stopping)
        if token is None:  # stopped while it waited for room: it ends at once, reported with the signal's code
            signum = self.signal or 15
            await run.interrupt(jobrun.SIGNAL_CODES.get(signum, ErrorCode.SIGNAL_OTHER),
                                f"pilot received signal {signum} before the job could start")
        self.running[job.panda_id] = run
        task = asyncio.create_task(self._run_slot(run, token))
        self._slots.add(task)
        task.add_done_callback(self._slots.discard)
        self.write_summary()

    async def _run_slot(self, run: jobrun.JobRun, token: int | None) -> None:
        try:
            await self.run_job(run)
        except DeliveryAbandoned as exc:
            self.failure = exc
        finally:
            self.running.pop(run.job.panda_id, None)
            self.under_way.set()  # (a job that ended before its payload ran)
            await self.ledger.release(token)

    async def run_job(self, run: jobrun.JobRun) -> None:
        job = run.job
        try:
            result = await run.run()
        except DeliveryAbandoned:
            raise
        except Exception as exc:  # a pilot bug must fail the job (its payload stopped, its log out), not the pilot
            log.exception("job %s: pilot exception", job.panda_id)
            await run.abandon(exc)
            run.result.final_delivered = await self.outbox.send(run.update_fields(final=True))
            result = run.result
        self.running.pop(job.panda_id, None)
        if run.removable():  # a multi-job pilot must not fill the slot's scratch with its jobs' inputs and outputs
            await asyncio.to_thread(shutil.rmtree, run.workdir, True)
            log.info("job %s: work dir %s removed", job.panda_id, run.workdir)
        self.record(asdict(result))

    async def reject(self, exc: JobDefinitionError, raw: Any) -> None:
        """A broken definition fails at once; its log, when it names one, is staged out and reported."""
        log.error("%s", exc.diag)
        salvage = log_only_job(raw, exc)
        if salvage is not None:
            run = jobrun.JobRun(salvage, self.config, self.r, self.outbox, 0.0, 0.0, self.budget)
            run.result.fail(exc.code, exc.diag)
            await asyncio.to_thread(write_pilot_diag, run.workdir, exc.diag)
            self.running[salvage.panda_id] = run
            await self.run_job(run)
            return
        if exc.panda_id is None:
            self.record({"panda_id": None, "state": "rejected", "pilot_error_code": exc.code,
                         "pilot_error_diag": exc.diag, "final_delivered": True})
            return
        now = time.time()
        delivered = await self.outbox.send({
            "jobId": exc.panda_id, "state": "failed", "attemptNr": exc.attempt_nr,
            "siteName": self.config.queue, "node": self.config.node,
            "startTime": panda_time(now), "endTime": panda_time(now),
            "pilotErrorCode": exc.code, "pilotErrorDiag": clip_diag(exc.diag),
        })
        self.record({"panda_id": exc.panda_id, "state": "failed", "pilot_error_code": exc.code,
                     "pilot_error_diag": exc.diag, "final_delivered": delivered})

    def record(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        self.write_summary()

    def write_summary(self) -> None:
        """summary.json: the jobs ended, then those running (their state so far)."""
        running = [{**asdict(run.result), "step": run.step} for run in self.running.values()]
        path = Path(self.config.run_dir) / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results + running, indent=1))
        tmp.replace(path)


def write_pilot_diag(workdir: Path, diag: str) -> None:
    """The pilot's word on a job that could not run, for its log tarball."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / PILOT_DIAG_FILE).write_text(diag + "\n")
