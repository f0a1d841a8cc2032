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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus, experiments, logs
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import Job
from nodepilot.outbox import Outbox, file_report, jobmetrics, pilot_timing
from nodepilot.timeutil import panda_time
from nodepilot.worker import batch_system, pilot_id
from services.monitor.catalog import write_input_catalog
from services.monitor.checks.base import CheckContext, Firing
from services.monitor.timebudget import TimeBudget
from services.monitor.watchdog import Watchdog

log = logging.getLogger(__name__)

# the runner's measurements of the payload tree -> update fields (kB, bytes, bytes/s)
USAGE_FIELDS = {
    "max_rss_kb": "maxRSS", "max_pss_kb": "maxPSS", "max_vmem_kb": "maxVMEM", "max_swap_kb": "maxSWAP",
    "avg_rss_kb": "avgRSS", "avg_pss_kb": "avgPSS", "avg_vmem_kb": "avgVMEM", "avg_swap_kb": "avgSWAP",
    "tot_rbytes": "totRBYTES", "tot_wbytes": "totWBYTES", "rate_rbytes": "rateRBYTES", "rate_wbytes": "rateWBYTES",
}
DEBUG_HEARTBEAT_S = 60.0
ES_BATCH = 10
STDOUT_TAIL_BYTES = 2048
SIGNAL_CODES = {1: ErrorCode.SIGNAL_OTHER, 2: ErrorCode.SIGINT, 3: ErrorCode.SIGQUIT,
                7: ErrorCode.SIGBUS, 10: ErrorCode.SIGUSR1, 11: ErrorCode.SIGSEGV,
                15: ErrorCode.SIGTERM, 24: ErrorCode.SIGXCPU}


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class JobResult:
    panda_id: int
    state: str = "starting"
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    exe_error_code: int = 0
    exe_error_diag: str = ""
    trans_exit_code: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    files_in: int = 0
    files_out: int = 0
    start_time: float | None = None
    end_time: float | None = None
    final_delivered: bool = False
    watchdog_check: str = ""  # the watchdog check that killed the payload, if one did

    def fail(self, code: int, diag: str) -> None:
        """Keep the first error as the job's; later ones only go to the log."""
        if self.pilot_error_code:
            log.info("job %s: further error %s: %s", self.panda_id, code, diag)
            return
        self.pilot_error_code = int(code)
        self.pilot_error_diag = clip_diag(diag)


class Interrupted(Exception):
    pass


class JobRun:
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
    async def wait_for(self, request_id: str, type_: str) -> dict[str, Any]:
        """Block on the job's stream until the answer to ``request_id`` arrives."""
        while True:
            for entry_id, event in await bus.read_events(self.r, self.job.panda_id, self.last_event):
                self.last_event = entry_id
                await self.r.hset(bus.job_key(self.job.panda_id), "last_event", entry_id)
                if event.get("request_id") == request_id and event.get("type") == type_:
                    return event
                await self.on_event(event)

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
        return min(DEBUG_HEARTBEAT_S, self.config.heartbeat_s) if self.debug else self.config.heartbeat_s

    def stdout_tail(self, limit: int = STDOUT_TAIL_BYTES) -> str:
        path = self.workdir / "payload.stdout"
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - limit))
                return fh.read(limit).decode(errors="replace")
        except OSError:
            return ""

    async def interrupt(self, code: int, diag: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = (int(code), diag)
            self.result.fail(code, diag)
        if self.payload_running:
            await bus.publish(self.r, bus.RUNNER_REQUESTS, {
                "action": "kill", "job_id": self.job.panda_id,
                "request_id": f"{self.job.panda_id}:kill:{uuid.uuid4().hex[:8]}",
                "reason": diag, "grace_seconds": 10,
            })

    # --- state and updates -------------------------------------------------------------------
    async def set_state(self, state: str) -> None:
        self.result.state = state
        await self.r.hset(bus.job_key(self.job.panda_id), mapping={
            "state": state, "result": json.dumps(asdict(self.result)),
        })
        log.info("job %s: %s", self.job.panda_id, state)

    def update_fields(self, final: bool) -> dict[str, Any]:
        job, res, payload = self.job, self.result, self.payload
        batch, batch_id = batch_system()
        fields: dict[str, Any] = {
            "jobId": job.panda_id, "state": res.state, "timestamp": panda_time(time.time()),
            "siteName": self.config.queue, "node": self.config.node,
            "attemptNr": job.attempt_nr, "schedulerID": "nodepilot", "pilotID": pilot_id(self.config.pilot_id_tag),
            "batchID": batch_id or None, "startTime": panda_time(res.start_time), "coreCount": job.core_count,
        }
        if payload:
            fields.update(cpuConsumptionTime=round(payload.get("cpu_seconds") or 0),
                          cpuConsumptionUnit="s", cpuConversionFactor=1.0,
                          nEvents=payload.get("n_events") or None)
            fields.update({name: _number(payload.get(key)) for key, name in USAGE_FIELDS.items()})
        if final:
            fields.update(
                endTime=panda_time(res.end_time), pilotErrorCode=res.pilot_error_code,
                pilotErrorDiag=res.pilot_error_diag or None,
                transExitCode=res.trans_exit_code if res.trans_exit_code is not None else None,
                exeErrorCode=res.exe_error_code, exeErrorDiag=res.exe_error_diag or None,
                pilotTiming=pilot_timing(res.timings), metaData=payload.get("report_text") or None,
                xml=file_report(self.staged) or None,
                jobMetrics=jobmetrics({"coreCount": job.core_count, "nInputFiles": res.files_in,
                                       "nOutputFiles": res.files_out, "batchSystem": batch,
                                       "maxGPUMemKB": payload.get("max_gpu_mem_kb") or None,
                                       "avgGPUUtil": payload.get("avg_gpu_util_pct") or None,
                                       "isolation": payload.get("isolation")}),
            )
        return {k: v for k, v in fields.items() if v is not None}

    async def mark_running(self, event: dict[str, Any]) -> None:
        if self.payload_running:
            return
        self.payload_running = True
        if self.kill_reason is not None:  # decided before the payload was known to run (or by a previous monitor)
            await self.interrupt(*self.kill_reason)
        self.result.start_time = self.result.start_time or event.get("start_time") or time.time()
        await self.set_state("running")
        await self.outbox.put(self.update_fields(final=False))
        self.start_watchdog(float(event.get("start_time") or time.time()))

    def start_watchdog(self, payload_started: float) -> None:
        ctx = CheckContext(job=self.job, workdir=self.workdir, queuedata=self.config.queuedata,
                           started=payload_started, redis=self.r)
        self.watchdog = Watchdog(ctx, on_fire=self.on_watchdog_fire)
        self._watchdog_task = asyncio.create_task(self.watchdog.run())
        if self.budget is not None:
            self._budget_task = asyncio.create_task(self.budget.watch(self.warn_time_short, self.stop_for_time))

    async def warn_time_short(self) -> None:
        """The slot ends soon: tell the payload (its signal, and no new event ranges)."""
        assert self.budget is not None
        signum = int(self.config.queuedata.watchdog.get("time_budget_signal", signal.SIGUSR1))
        await bus.publish(self.r, bus.RUNNER_REQUESTS, {
            "action": "signal", "job_id": self.job.panda_id, "request_id": self._request_id("warn"),
            "signum": signum, "reason": f"the slot ends at {panda_time(self.budget.end)} UTC",
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
            if (not self.result.pilot_error_code or self.partial) and self.job.outputs:
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
            fields = self.update_fields(final=False)
            if self.debug:
                fields["stdout"] = self.stdout_tail()
            await self.outbox.put(fields)

    def _request_id(self, step: str) -> str:
        return f"{self.job.panda_id}:{self.job.attempt_nr}:{step}"

    def _endpoints(self, activity: str) -> list[dict[str, str]]:
        """Every endpoint of the activity: the stager decides (job and queue) whether alternatives are used."""
        return [{"name": e.name, "url": e.url} for e in self.config.queuedata.endpoints_for(activity)]

    async def _stage(self, kind: str, activity: str, **fields: Any) -> dict[str, Any]:
        request_id = self._request_id(kind)
        self.set_step(kind)
        await bus.publish(self.r, bus.STAGER_REQUESTS, {
            "kind": kind, "job_id": self.job.panda_id, "request_id": request_id,
            "workdir": str(self.workdir), "endpoints": self._endpoints(activity), "task_id": self.job.task_id,
            **({"alt_stageout": self.job.alt_stage_out} if kind != "stagein" else {}), **fields,
        })
        return await self.wait_for(request_id, f"{kind}_done")

    async def stage_in(self) -> None:
        t = time.monotonic()
        event = await self._stage("stagein", "read_lan", files=[f.to_dict() for f in self.job.inputs],
                                  direct_access=self.job.transfer_type.lower() == "direct")
        self.result.timings["stagein"] = time.monotonic() - t
        files = event.get("files", [])
        self.result.files_in = sum(1 for f in files if f.get("status") in ("done", "direct"))
        direct = {f["lfn"]: f["turl"] for f in files if f.get("status") == "direct" and f.get("turl")}
        if event.get("ok"):
            await asyncio.to_thread(write_input_catalog, self.workdir, self.job.inputs, direct)
        if not event.get("ok"):
            self.result.fail(event.get("error_code") or ErrorCode.STAGEIN_FAILED,
                             event.get("diag") or "stage-in failed")

    async def run_event_service(self) -> None:
        """The eventclient serves ranges to the payload and stages each output out as it comes."""
        job = self.job
        start_id = self._request_id("es-start")
        await bus.publish(self.r, bus.EVENTCLIENT_REQUESTS, {
            "action": "start", "job_id": job.panda_id, "request_id": start_id, "workdir": str(self.workdir),
            "jobset_id": job.jobset_id or 0, "task_id": job.task_id, "batch": ES_BATCH,
            **{k: v for k, v in self.config.queuedata.es.items() if k in ("batch", "zip_outputs", "zip_seconds")},
            "endpoints": self._endpoints("es_events"),
            "scope_out": job.outputs[0].scope if job.outputs else (job.log.scope if job.log else ""),
            "ranges_file": self.config.ranges_file or None,
            "report_file": str(self.workdir.parent / f"ranges-{job.panda_id}.jsonl") if self.config.ranges_file
            else None,
        })
        ready = await self.wait_for(start_id, "es_ready")
        if not ready.get("ok", True) or not ready.get("socket"):
            self.result.fail(ready.get("error_code") or ErrorCode.ES_FATAL,
                             ready.get("diag") or "the event service could not serve this job")
            return
        self.es_socket = ready["socket"]
        await self.run_payload({"NODEPILOT_EVENTS_SOCKET": self.es_socket, **(ready.get("env") or {})})
        finish_id = self._request_id("es-finish")
        await bus.publish(self.r, bus.EVENTCLIENT_REQUESTS, {
            "action": "finish", "job_id": job.panda_id, "request_id": finish_id,
            "reason": self.kill_reason[1] if self.kill_reason else "payload finished",
        })
        done = await self.wait_for(finish_id, "es_done")
        self.payload["n_events"] = self.payload.get("n_events") or done.get("n_events")
        self.result.files_out = int(done.get("finished") or 0)
        log.info("job %s: event ranges: %s finished, %s failed", job.panda_id, done.get("finished"),
                 done.get("failed"))
        if done.get("error_code"):
            self.result.fail(done["error_code"], done.get("diag") or "event service failed")

    async def softkill(self) -> None:
        """Event service: let the payload finish the ranges in hand, then stop."""
        if not self.es_socket:
            return
        from nodepilot.http import async_uds_client

        try:
            async with async_uds_client(self.es_socket, timeout=5) as client:
                await client.post("/softkill")
        except Exception as exc:  # the payload API may be gone already
            log.warning("job %s: softkill not delivered: %s", self.job.panda_id, exc)

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
        await bus.publish(self.r, bus.RUNNER_REQUESTS, {
            "action": "run", "job_id": self.job.panda_id, "request_id": request_id,
            "workdir": str(self.workdir), "command": self.job.transformation,
            "args": self.job.job_pars, "env": env, "setup": setup, "experiment": experiment.name,
            **({"container": container} if container else {}),
            **({"sample_interval": interval} if (interval := self.config.queuedata.watchdog.get("sample_interval_s"))
               else {}),
        })
        try:
            self.payload = await self.wait_for(request_id, "payload_finished")
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

    def payload_env(self) -> dict[str, str]:
        job = self.job
        return {
            "PANDAID": str(job.panda_id), "PanDA_TaskID": str(job.task_id or ""),
            "PANDA_RESOURCE": self.config.queue, "ATHENA_CORE_NUMBER": str(job.core_count),
            "PILOT_JOB_DIR": str(self.workdir), "HARVESTER_WORKER_ID": "",
            **({"NODEPILOT_SLOT_END": f"{self.budget.end:.0f}", "NODEPILOT_STOP_AT": f"{self.budget.stop_at:.0f}"}
               if self.budget else {}),
        }

    async def stage_out(self) -> None:
        guids = self.payload.get("output_guids") or {}
        files = []
        try:
            extra = self.experiment().extra_outputs(self.job, self.workdir)
        except Exception as exc:
            log.exception("job %s: experiment plug-in failed to name extra outputs", self.job.panda_id)
            self.result.fail(ErrorCode.STAGEOUT_FAILED, f"experiment plug-in failed (extra outputs): {exc!r}")
            extra = []
        outputs = [*self.job.outputs, *extra]
        if self.partial:  # stopped for time: what the payload completed
            present = [spec for spec in outputs if (self.workdir / spec.lfn).is_file()]
            self.result.pilot_error_diag = clip_diag(
                f"{self.result.pilot_error_diag}; partial result: {len(present)} of {len(outputs)} outputs "
                "present, staged out")
            outputs = present
        for spec in outputs:
            d = spec.to_dict()
            d["guid"] = guids.get(spec.lfn) or spec.guid or str(uuid.uuid4())
            files.append(d)
        if not files:
            return
        event = await self._stage("stageout", "write_lan", files=files)
        self.staged.extend(event.get("files", []))
        done = [f for f in event.get("files", []) if f.get("status") == "done"]
        self.result.files_out = len(done)
        if not event.get("ok"):
            missing_allowed = {f["lfn"] for f in event.get("files", [])
                               if f.get("error_code") == ErrorCode.MISSING_OUTPUT
                               and f["lfn"] in self.job.allow_no_output}
            failed = [f for f in event.get("files", []) if f.get("status") != "done"
                      and f["lfn"] not in missing_allowed]
            if failed:
                self.result.fail(event.get("error_code") or ErrorCode.STAGEOUT_FAILED,
                                 event.get("diag") or "stage-out failed")

    async def stage_log(self) -> None:
        log_spec = self.job.log
        assert log_spec is not None
        spec = log_spec.to_dict()
        spec["guid"] = spec["guid"] or str(uuid.uuid4())
        exclude = [f.lfn for f in self.job.inputs] + [f.lfn for f in self.job.outputs]
        event = await self._stage("stagelog", "pl", log=spec, exclude=exclude,
                                  tarball_dir=f"tarball_PandaJob_{self.job.panda_id}_{self.config.queue}")
        self.staged.extend(event.get("files", []))
        if not event.get("ok"):
            self.result.fail(event.get("error_code") or ErrorCode.LOG_CREATION_FAILED,
                             event.get("diag") or "log stage-out failed")
