"""The pilot's outer loop: acquire a job, run it, repeat while the slot's time allows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus, exitcodes
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import JobDefinitionError, parse_job
from nodepilot.panda.client import ServerClient, ServerError, UpdateReply, make_client
from nodepilot.timeutil import panda_time
from nodepilot.worker import cpu_mhz, free_disk_mb, memory_mb, node_inventory
from services.monitor import jobrun
from services.monitor.updates import DeliveryAbandoned, Outbox

log = logging.getLogger(__name__)

ACQUIRE_ATTEMPTS = 5
WORKER_REPORT_S = 10.0
GRACEFUL_STOP_S = 110.0  # the launcher kills everything at 120 s


class Pilot:
    def __init__(self, config: PilotConfig, r: aioredis.Redis, launched_at: float | None = None) -> None:
        self.config, self.r = config, r
        self.launched_at = launched_at or time.time()
        self.started = time.monotonic()
        self.client: ServerClient = make_client(config)
        self.outbox = Outbox(r, self.client, on_reply=self.on_reply)
        self.current: jobrun.JobRun | None = None
        self.results: list[dict[str, Any]] = []
        self.signal: int | None = None
        self._acquiring: asyncio.Task[Any] | None = None

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
        if self.current is not None:
            await bus.emit(self.r, self.current.job.panda_id, "monitor", "signal", signum=signum)

    def _stop_overdue(self, signum: int) -> None:
        """Last resort: the graceful stop hangs (e.g. the launcher and the other services are gone)."""
        log.error("graceful stop not done within %.0f s: exiting now", GRACEFUL_STOP_S)
        os._exit(exitcodes.SIGNALLED + signum)

    async def on_reply(self, fields: dict[str, Any], reply: UpdateReply) -> None:
        command = (reply.command or "").lower()
        if command in ("", "null", "none"):
            return
        log.info("server command for job %s: %s", fields.get("jobId"), command)
        if self.current is not None and self.current.job.panda_id == fields.get("jobId"):
            await bus.emit(self.r, self.current.job.panda_id, "monitor", "server_command", command=command)

    # --- the loop ------------------------------------------------------------------------
    def time_left(self) -> float:
        limits = [x for x in (self.config.lifetime_s, self.config.queuedata.maxtime_s) if x]
        if not limits:
            return float("inf")
        return min(limits) - (time.time() - self.launched_at)

    async def run(self) -> int:
        sender = asyncio.create_task(self.outbox.run())
        reports = asyncio.create_task(self.report_worker("started"))  # never in the first job's way
        try:
            return await self._loop()
        except DeliveryAbandoned as exc:
            log.error("giving up: %s (pilot error %s)", exc, ErrorCode.SERVER_COMMUNICATION)
            return exitcodes.UPDATE_LOST
        finally:
            sender.cancel()
            await asyncio.wait([reports], timeout=WORKER_REPORT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.report_worker("finished"), WORKER_REPORT_S)
            await self.client.aclose()

    async def report_worker(self, status: str) -> None:
        """Best effort: the node's inventory at the start, and the Harvester worker's status."""
        config = self.config
        try:
            if status == "started":
                await self.client.update_worker_node(await asyncio.to_thread(
                    node_inventory, config.queuedata.site or config.queue, config.queue, config.node,
                    config.work_dir))
            worker_id, harvester_id = os.environ.get("HARVESTER_WORKER_ID"), os.environ.get("HARVESTER_ID")
            if worker_id and harvester_id:
                await self.client.update_worker_status(worker_id, harvester_id, status, config.node)
        except Exception as exc:  # never the pilot's end: the server only keeps statistics of these
            log.warning("worker report (%s) not delivered: %s", status, exc)

    async def _loop(self) -> int:
        initial_setup = time.time() - self.launched_at
        while self.signal is None:
            if self.config.max_jobs and len(self.results) >= self.config.max_jobs:
                break
            if self.time_left() < 60:
                log.info("stopping: %.0f s left in the slot", self.time_left())
                break
            t = time.monotonic()
            try:
                self._acquiring = asyncio.create_task(self.acquire())
                raw = await self._acquiring
            except asyncio.CancelledError:
                break
            except ServerError as exc:
                log.error("could not get a job: %s", exc)
                return exitcodes.SERVER if not self.results else exitcodes.OK
            finally:
                self._acquiring = None
            if raw is None:
                log.info("no job available%s", "" if not self.results else " any more")
                break
            await self.run_job(raw, time.monotonic() - t, initial_setup)
            initial_setup = 0.0
        await self.outbox.flush()
        if self.signal is not None:
            return exitcodes.SIGNALLED + self.signal
        if any(not r.get("final_delivered") for r in self.results):
            return exitcodes.UPDATE_LOST
        return exitcodes.OK

    async def acquire(self) -> dict[str, Any] | None:
        params = {
            "siteName": self.config.queuedata.site or self.config.queue,
            "computingElement": self.config.queue, "prodSourceLabel": self.config.job_label,
            "diskSpace": free_disk_mb(self.config.work_dir), "mem": memory_mb(), "cpu": cpu_mhz(),
            "node": self.config.node, "resourceType": self.config.resource_type or None,
        }
        params = {k: v for k, v in params.items() if v is not None}
        delay = 1.0
        for attempt in range(1, ACQUIRE_ATTEMPTS + 1):
            try:
                return await self.client.acquire_job(params)
            except ServerError as exc:
                if not exc.retryable or attempt == ACQUIRE_ATTEMPTS:
                    raise
                log.warning("acquire_job failed (%s); retry %d in %.0f s", exc, attempt, delay)
                await asyncio.sleep(delay)
                delay *= 2
        return None

    async def run_job(self, raw: dict[str, Any], getjob_s: float, initial_setup_s: float) -> None:
        try:
            job = parse_job(raw)
        except JobDefinitionError as exc:
            await self.reject(exc, raw)
            return
        run = jobrun.JobRun(job, self.config, self.r, self.outbox, getjob_s, initial_setup_s)
        self.current = run
        try:
            result = await run.run()
        except DeliveryAbandoned:
            raise
        except Exception as exc:  # a pilot bug must fail the job, not the pilot
            log.exception("job %s: pilot exception", job.panda_id)
            run.result.fail(ErrorCode.PILOT_EXCEPTION, f"pilot exception: {exc!r}")
            run.result.end_time = time.time()
            run.result.state = "failed"
            run.result.final_delivered = await self.outbox.send(run.update_fields(final=True))
            result = run.result
        finally:
            self.current = None
        self.record(asdict(result))

    async def reject(self, exc: JobDefinitionError, raw: Any) -> None:
        log.error("%s", exc.diag)
        if exc.panda_id is None:
            self.record({"panda_id": None, "state": "rejected", "pilot_error_code": exc.code,
                         "pilot_error_diag": exc.diag, "final_delivered": True})
            return
        now = time.time()
        delivered = await self.outbox.send({
            "jobId": exc.panda_id, "state": "failed", "attemptNr": exc.attempt_nr,
            "siteName": self.config.queuedata.site or self.config.queue, "node": self.config.node,
            "startTime": panda_time(now), "endTime": panda_time(now),
            "pilotErrorCode": exc.code, "pilotErrorDiag": clip_diag(exc.diag),
        })
        self.record({"panda_id": exc.panda_id, "state": "failed", "pilot_error_code": exc.code,
                     "pilot_error_diag": exc.diag, "final_delivered": delivered})

    def record(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        path = Path(self.config.run_dir) / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(path)
