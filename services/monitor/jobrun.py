"""One job from definition to final update, driven by the events of its stream.

The monitor publishes a request to a service and blocks on the job's event stream until the
answer arrives (no polling). Signals and server commands arrive on the same stream, so a wait
wakes for them at once. Only the first error of a job becomes its pilot error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus, deadlines, demand, experiments, limits, logs
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import Job
from nodepilot.outbox import Outbox
from nodepilot.timeutil import panda_time
from nodepilot.usage import read_usage
from services.monitor import timebudget
from services.monitor.checks.base import CheckContext, Firing
from services.monitor.es_steps import EventServiceSteps
from services.monitor.fields import job_update
from services.monitor.result import JobResult
from services.monitor.stage_steps import StageSteps
from services.monitor.timebudget import TimeBudget
from services.monitor.watchdog import Watchdog

log = logging.getLogger(__name__)

DEBUG_HEARTBEAT_S = 60.0
STDOUT_TAIL_BYTES = 2048
ABANDON_STOP_S = 60.0  # a payload's stop (TERM, KILL after 10 s) when the pilot fails its job
ABANDON_LOG_S = 600.0  # and then the log's stage-out
SIGNAL_CODES = {1: ErrorCode.SIGNAL_OTHER, 2: ErrorCode.SIGINT, 3: ErrorCode.SIGQUIT,
                7: ErrorCode.SIGBUS, 10: ErrorCode.SIGUSR1, 11: ErrorCode.SIGSEGV,
                15: ErrorCode.SIGTERM, 24: ErrorCode.SIGXCPU}

# an answer that does not come within its deadline: which service owed it, the job's error code
NO_ANSWER: dict[str, tuple[str, int]] = {
    "stagein_done": ("stager", ErrorCode.STAGEIN_TIMEOUT), "stageout_done": ("stager", ErrorCode.STAGEOUT_TIMEOUT),
    "stagelog_done": ("stager", ErrorCode.STAGEOUT_TIMEOUT), "payload_finished": ("runner", ErrorCode.PILOT_EXCEPTION),
    "es_ready": ("eventclient", ErrorCode.ES_FATAL), "es_done": ("eventclient", ErrorCode.ES_FATAL),
}


class Interrupted(Exception):
    pass


class JobRun(StageSteps, EventServiceSteps):
    def __init__(self, job: Job, config: PilotConfig, r: aioredis.Redis, outbox: Outbox,
                 getjob_seconds: float = 0.0, initial_setup_seconds: float = 0.0,
                 budget: TimeBudget | None = None, resumed: dict[str, Any] | None = None) -> None:
        self.job, self.config, self.r, self.outbox = job, config, r, outbox
        self.resumed = resumed  # the result a previous monitor saved: this run replays the job (resume.py)
        self.budget = budget
        self.partial = False  # stopped by the slot's time budget: what is complete is staged out
        self._budget_task: asyncio.Task[None] | None = None
        self.result = JobResult(job.panda_id)
        self.result.timings.update(getjob=getjob_seconds, initial_setup=initial_setup_seconds)
        self.workdir = Path(config.work_dir).resolve() / job.work_dir_name
        self.last_event = "0"
        self.payload_running = False
        self.on_running: Callable[[], None] | None = None  # called once its payload runs
        self.kill_reason: tuple[int, str] | None = None
        self.payload: dict[str, Any] = {}
        self.staged: list[dict[str, Any]] = []
        self.debug = job.debug
        self.es_socket = ""
        self.watchdog: Watchdog | None = None
        self._watchdog_task: asyncio.Task[Firing] | None = None
        self._heartbeat_changed = asyncio.Event()
        self.step = ""  # what the job is doing now: setup, stagein, payload, stageout, stagelog, final

    def set_step(self, step: str) -> None:
        self.step = step
        logs.set_step(step)
        log.info("job %s: step %s", self.job.panda_id, step)

    # --- events --------------------------------------------------------------------------
    async def wait_for(self, request_id: str, type_: str, deadline_s: float = deadlines.ANSWER_S) -> dict[str, Any]:
        """Block on the job's stream until the answer to ``request_id`` arrives, for ``deadline_s`` at most:
        then the job fails with a diag naming the service and the step, and this returns a failed answer."""
        end = time.monotonic() + deadline_s
        while (left := end - time.monotonic()) > 0:
            block_ms = max(1, int(left * 1000))
            for entry_id, event in await bus.read_events(self.r, self.job.panda_id, self.last_event, block_ms):
                self.last_event = entry_id
                await self.r.hset(bus.job_key(self.job.panda_id), "last_event", entry_id)
                if event.get("request_id") == request_id and event.get("type") == type_:
                    return event
                await self.on_event(event)
        return await self.no_answer(request_id, type_, deadline_s)

    async def no_answer(self, request_id: str, type_: str, deadline_s: float) -> dict[str, Any]:
        """The answer a service never gave: the job fails (a payload still running is killed first)."""
        service, code = NO_ANSWER.get(type_, ("service", ErrorCode.PILOT_EXCEPTION))
        diag = clip_diag(f"no answer from the {service} to request {request_id} ({type_}) within {deadline_s:.4g} s")
        log.error("job %s: %s", self.job.panda_id, diag)
        self.result.fail(code, diag)
        if type_ == "payload_finished":
            with contextlib.suppress(Exception):
                await self._kill_payload(diag)
        return {"type": type_, "request_id": request_id, "no_answer": True, "ok": False, "error_code": int(code),
                "diag": diag, "pilot_error_code": int(code), "pilot_error_diag": diag, "files": []}

    async def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "signal":
            signum = int(event.get("signum", 15))
            await self.interrupt(SIGNAL_CODES.get(signum, ErrorCode.SIGNAL_OTHER),
                                 f"pilot received signal {signum}")
        elif kind == "server_command":
            await self.on_command(str(event.get("command", "")).lower())
        elif kind == "payload_started":
            await self.mark_running(event)

    async def on_command(self, command: str) -> None:
        if command == "tobekilled":
            await self.interrupt(ErrorCode.KILLED_BY_SERVER, "job killed by the server (tobekilled)")
        elif command in ("debug", "debugoff"):
            self.debug = command == "debug"
            log.info("job %s: debug mode %s", self.job.panda_id, "on" if self.debug else "off")
            self._heartbeat_changed.set()
        elif command == "softkill" and self.job.event_service:
            await self.softkill()
        else:
            log.info("job %s: server command %r ignored for this kind of job", self.job.panda_id, command)

    def heartbeat_period(self) -> float:
        """The configured period, never under the floor (a config from the environment is not checked)."""
        period = min(DEBUG_HEARTBEAT_S, self.config.heartbeat_s) if self.debug else self.config.heartbeat_s
        return max(limits.HEARTBEAT_S[0], period)

    def stdout_tail(self, limit: int = STDOUT_TAIL_BYTES) -> str:
        path = self.workdir / "payload.stdout"
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - limit))
                return fh.read(limit).decode(errors="replace")
        except OSError:
            return ""

    async def abandon(self, exc: BaseException) -> None:
        """The pilot's own code failed this job: before the slot goes to the next job, the payload's tree
        is stopped (never left running beside it) and the log staged out, each within a bound."""
        self.result.fail(ErrorCode.PILOT_EXCEPTION, f"pilot exception: {exc!r}")
        self.stop_watchdog()
        if self.step == "payload" and not self.payload:  # the payload may be running: stop it, wait for its end
            with contextlib.suppress(Exception), demand.need("runner"):
                async with asyncio.timeout(ABANDON_STOP_S):
                    await self._kill_payload("the pilot failed this job")
                    self.payload = await self.wait_for(self._request_id("run"), "payload_finished")
        if self.job.log is not None and not any(f.get("lfn") == self.job.log.lfn for f in self.staged):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(ABANDON_LOG_S):
                    await self.stage_log()
        self.result.end_time = time.time()
        self.result.state = "failed"

    async def _kill_payload(self, reason: str) -> None:
        await bus.publish(self.r, bus.RUNNER_REQUESTS, {
            "action": "kill", "job_id": self.job.panda_id,
            "request_id": f"{self.job.panda_id}:kill:{uuid.uuid4().hex[:8]}", "reason": reason, "grace_seconds": 10,
        })

    async def interrupt(self, code: int, diag: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = (int(code), diag)
            self.result.fail(code, diag)
        if self.payload_running:
            await self._kill_payload(diag)

    # --- state and updates -------------------------------------------------------------------
    async def set_state(self, state: str) -> None:
        self.result.state = state
        await self.r.hset(bus.job_key(self.job.panda_id), mapping={
            "state": state, "result": json.dumps(asdict(self.result)),
        })
        log.info("job %s: %s", self.job.panda_id, state)

    def update_fields(self, final: bool, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        """This job's update now (services/monitor/fields.py); ``usage``: the payload's figures so far."""
        return job_update(self.job, self.config, self.result, self.payload, self.staged, final=final, usage=usage)

    async def mark_running(self, event: dict[str, Any]) -> None:
        if self.payload_running:
            return
        self.payload_running = True
        if self.kill_reason is not None:  # decided before the payload was known to run (or by a previous monitor)
            await self.interrupt(*self.kill_reason)
        self.result.start_time = self.result.start_time or event.get("start_time") or time.time()
        await self.set_state("running")
        await self.outbox.put(self.update_fields(final=False))
        if self.on_running is not None:
            self.on_running()
        self.start_watchdog(float(event.get("start_time") or time.time()))

    def start_watchdog(self, payload_started: float) -> None:
        ctx = CheckContext(job=self.job, workdir=self.workdir, queuedata=self.config.queuedata,
                           started=payload_started, redis=self.r)
        self.watchdog = Watchdog(ctx, on_fire=self.on_watchdog_fire)
        self._watchdog_task = asyncio.create_task(self.watchdog.run())
        if self.budget is not None:
            self._budget_task = asyncio.create_task(self.budget.watch(self.warn_time_short, self.stop_for_time))

    async def warn_time_short(self) -> None:
        """The slot ends soon: tell the payload (the warning file; the signal to one declared to
        handle it; no new event ranges)."""
        assert self.budget is not None
        try:
            await asyncio.to_thread(timebudget.write_warning, self.workdir, self.budget)
        except OSError as exc:
            log.warning("job %s: time warning file not written: %s", self.job.panda_id, exc)
        signum = int(self.config.queuedata.watchdog.get("time_budget_signal", signal.SIGUSR1))
        try:
            handled, who = timebudget.signal_handled(self.job, self.config.queuedata, self.experiment())
        except Exception as exc:  # the plug-in's failure: no signal, the file says it all
            handled, who = False, f"the experiment plug-in failed: {exc!r}"
        if not handled:
            log.info("job %s: time warning by file only, no signal %d (%s)", self.job.panda_id, signum, who)
        else:
            await bus.publish(self.r, bus.RUNNER_REQUESTS, {
                "action": "signal", "job_id": self.job.panda_id, "request_id": self._request_id("warn"),
                "signum": signum, "reason": f"the slot ends at {panda_time(self.budget.end)} UTC ({who})",
            })
        if self.job.event_service:
            await self.softkill()

    async def stop_for_time(self) -> None:
        assert self.budget is not None
        self.partial = True
        await self.interrupt(ErrorCode.WALL_TIME,
                             f"time budget: the slot ends at {panda_time(self.budget.end)} UTC; payload stopped "
                             f"{self.budget.stop_s:.0f} s before it (warned {self.budget.warn_s:.0f} s before)")

    async def on_watchdog_fire(self, firing: Firing) -> None:
        results = self.watchdog.last_results if self.watchdog else {}
        self.result.watchdog_check = next((name for name, r in results.items() if r.get("diag") == firing.diag), "")
        await self.interrupt(firing.code, firing.diag)

    def stop_watchdog(self) -> None:
        for task in (self._watchdog_task, self._budget_task):
            if task is not None:
                task.cancel()
        self._watchdog_task = self._budget_task = None

    # --- the lifecycle -------------------------------------------------------------------------
    async def run(self) -> JobResult:
        with logs.job_context(self.job.panda_id, "setup"):
            return await self._run()

    async def _run(self) -> JobResult:
        self.set_step("setup")
        t0 = time.monotonic()
        if self.resumed is None:  # known to a monitor restarted from now on, before anything else happens
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.rpush(bus.PILOT_JOBS, self.job.panda_id)
                pipe.hset(bus.job_key(self.job.panda_id), "definition", json.dumps(self.job.raw))
                await pipe.execute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result.start_time = (self.resumed or {}).get("start_time") or time.time()
        await self.set_state("starting")
        if self.resumed is None:  # a resumed job's server knows it started
            await self.outbox.put(self.update_fields(final=False))
        self.result.timings["setup"] = time.monotonic() - t0
        heartbeat = asyncio.create_task(self.heartbeat())
        try:
            if not self.result.pilot_error_code and self.job.inputs:
                await self.stage_in()
            if not self.result.pilot_error_code:
                if self.job.event_service:
                    await self.run_event_service()
                else:
                    await self.run_payload()
            t_out = time.monotonic()
            if self.payload and (self.job.outputs or self.job.log is not None):  # the payload ran
                await self.set_state("transferring")
                await self.outbox.put(self.update_fields(final=False))
            with demand.need("stager") if self.job.outputs or self.job.log else contextlib.nullcontext():
                # an event-service job's outputs went out range by range; its declared (merged) outputs are the
                # merge job's
                if ((not self.result.pilot_error_code or self.partial) and self.job.outputs
                        and not self.job.event_service):
                    await self.stage_out()
                if self.job.log is not None:
                    await self.stage_log()
            self.result.timings["stageout"] = time.monotonic() - t_out
        finally:
            heartbeat.cancel()
        self.result.end_time = time.time()
        self.set_step("final")
        await self.set_state("failed" if self.result.pilot_error_code else "finished")
        self.result.final_delivered = await self.outbox.send(self.update_fields(final=True))
        await self.set_state(self.result.state)
        return self.result

    async def heartbeat(self) -> None:
        while True:
            self._heartbeat_changed.clear()
            with contextlib.suppress(TimeoutError):  # a timer, woken early when the period changes
                await asyncio.wait_for(self._heartbeat_changed.wait(), self.heartbeat_period())
                continue
            running = self.payload_running and not self.payload  # the figures measured so far go along
            update = self.update_fields(final=False, usage=await read_usage(self.r, self.job.panda_id)
                                        if running else None)
            if self.debug:
                update["stdout"] = self.stdout_tail()
            await self.outbox.put(update)

    def log_staged(self) -> bool:
        """Whether the job's log tarball reached storage."""
        return self.job.log is not None and any(
            f.get("lfn") == self.job.log.lfn and f.get("status") == "done" for f in self.staged)

    def removable(self) -> bool:
        """Whether the job's work dir may go: its final update delivered, and its log staged out (a job without a
        log: finished). A dir kept (``--keep-workdirs``, or a failure) says why the job ended as it did."""
        if self.config.keep_workdirs or not self.result.final_delivered:
            return False
        return self.log_staged() if self.job.log is not None else self.result.state == "finished"

    def _request_id(self, step: str) -> str:
        return f"{self.job.panda_id}:{self.job.attempt_nr}:{step}"

    def experiment(self) -> experiments.Experiment:
        return experiments.load(experiments.name_for(self.config.pilot_user, self.config.queuedata.pilot_user))

    async def run_payload(self, extra_env: dict[str, str] | None = None) -> None:
        t = time.monotonic()
        self.set_step("payload")
        request_id = self._request_id("run")
        job, queuedata = self.job, self.config.queuedata
        try:  # the experiment's plug-in: its failure fails the job's setup, never the pilot
            experiment = self.experiment()
            setup = experiments.setup_script(experiment, job, queuedata)
            env = {**experiment.environment(job, queuedata), **self.payload_env(), **(extra_env or {})}
            container = experiment.container(job, queuedata)
        except Exception as exc:
            log.exception("job %s: experiment plug-in failed", job.panda_id)
            self.result.fail(ErrorCode.SETUP_FAILED, f"experiment plug-in failed: {exc!r}")
            return
        with demand.need("runner"):
            await bus.publish(self.r, bus.RUNNER_REQUESTS, {
                "action": "run", "job_id": self.job.panda_id, "request_id": request_id,
                "workdir": str(self.workdir), "command": self.job.transformation,
                "args": self.job.job_pars, "env": env, "setup": setup, "experiment": experiment.name,
                **({"container": container} if container else {}),
                **({"sample_interval": interval}
                   if (interval := self.config.queuedata.watchdog.get("sample_interval_s")) else {}),
            })
            try:
                self.payload = await self.wait_for(request_id, "payload_finished", self.payload_deadline())
            finally:
                self.stop_watchdog()
        self.payload_running = False
        self.result.timings["payload"] = time.monotonic() - t
        p = self.payload
        self.result.trans_exit_code = p.get("exit_code")
        self.result.exe_error_code = int(p.get("exe_error_code") or 0)
        self.result.exe_error_diag = clip_diag(p.get("exe_error_diag") or "")
        if self.kill_reason is None and p.get("pilot_error_code"):
            self.result.fail(p["pilot_error_code"], p.get("pilot_error_diag") or "payload failed")

    def payload_deadline(self) -> float:
        """The job's wall time or the slot's end, whichever comes first, and the time a kill takes."""
        until_end = self.budget.end - time.time() if self.budget is not None else None
        return deadlines.payload_deadline(self.job.max_walltime, until_end)

    def payload_env(self) -> dict[str, str]:
        job = self.job
        return {
            "PANDAID": str(job.panda_id), "PanDA_TaskID": str(job.task_id or ""),
            "PANDA_RESOURCE": self.config.queue, "ATHENA_CORE_NUMBER": str(job.core_count),
            "PILOT_JOB_DIR": str(self.workdir), "HARVESTER_WORKER_ID": "",
            **({"NODEPILOT_SLOT_END": f"{self.budget.end:.0f}", "NODEPILOT_STOP_AT": f"{self.budget.stop_at:.0f}",
                "NODEPILOT_TIME_WARNING": str(self.workdir / timebudget.WARNING_FILE)} if self.budget else {}),
        }
