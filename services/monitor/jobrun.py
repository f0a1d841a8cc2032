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
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.job import Job
from nodepilot.timeutil import panda_time
from nodepilot.worker import batch_system, pilot_id
from services.monitor.checks.base import CheckContext, Firing
from services.monitor.updates import Outbox, file_report, jobmetrics, pilot_timing
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
                 getjob_seconds: float = 0.0, initial_setup_seconds: float = 0.0) -> None:
        self.job, self.config, self.r, self.outbox = job, config, r, outbox
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
            "siteName": self.config.queuedata.site or self.config.queue, "node": self.config.node,
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
                                       "nOutputFiles": res.files_out, "batchSystem": batch}),
            )
        return {k: v for k, v in fields.items() if v is not None}

    async def mark_running(self, event: dict[str, Any]) -> None:
        if self.payload_running:
            return
        self.payload_running = True
        self.result.start_time = self.result.start_time or event.get("start_time") or time.time()
        await self.set_state("running")
        await self.outbox.put(self.update_fields(final=False))
        self.start_watchdog(float(event.get("start_time") or time.time()))

    def start_watchdog(self, payload_started: float) -> None:
        ctx = CheckContext(job=self.job, workdir=self.workdir, queuedata=self.config.queuedata,
                           started=payload_started, redis=self.r)
        self.watchdog = Watchdog(ctx, on_fire=self.on_watchdog_fire)
        self._watchdog_task = asyncio.create_task(self.watchdog.run())

    async def on_watchdog_fire(self, firing: Firing) -> None:
        await self.interrupt(firing.code, firing.diag)

    def stop_watchdog(self) -> None:
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            self._watchdog_task = None

    # --- the lifecycle -------------------------------------------------------------------------
    async def run(self) -> JobResult:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result.start_time = time.time()
        await self.r.rpush(bus.PILOT_JOBS, self.job.panda_id)
        await self.r.hset(bus.job_key(self.job.panda_id), "definition", json.dumps(self.job.raw))
        await self.set_state("starting")
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
            if not self.result.pilot_error_code and self.job.outputs:
                await self.stage_out()
            if self.job.log is not None:
                await self.stage_log()
            self.result.timings["stageout"] = time.monotonic() - t_out
        finally:
            heartbeat.cancel()
        self.result.end_time = time.time()
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
        endpoints = self.config.queuedata.endpoints_for(activity)
        if activity != "read_lan" and self.job.alt_stage_out == "off":
            endpoints = endpoints[:1]
        return [{"name": e.name, "url": e.url} for e in endpoints]

    async def _stage(self, kind: str, activity: str, **fields: Any) -> dict[str, Any]:
        request_id = self._request_id(kind)
        await bus.publish(self.r, bus.STAGER_REQUESTS, {
            "kind": kind, "job_id": self.job.panda_id, "request_id": request_id,
            "workdir": str(self.workdir), "endpoints": self._endpoints(activity), **fields,
        })
        return await self.wait_for(request_id, f"{kind}_done")

    async def stage_in(self) -> None:
        t = time.monotonic()
        event = await self._stage("stagein", "read_lan", files=[f.to_dict() for f in self.job.inputs])
        self.result.timings["stagein"] = time.monotonic() - t
        self.result.files_in = sum(1 for f in event.get("files", []) if f.get("status") == "done")
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
        await self.run_payload({"NODEPILOT_EVENTS_SOCKET": self.es_socket})
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

    async def run_payload(self, extra_env: dict[str, str] | None = None) -> None:
        t = time.monotonic()
        request_id = self._request_id("run")
        await bus.publish(self.r, bus.RUNNER_REQUESTS, {
            "action": "run", "job_id": self.job.panda_id, "request_id": request_id,
            "workdir": str(self.workdir), "command": self.job.transformation,
            "args": self.job.job_pars, "env": {**self.payload_env(), **(extra_env or {})},
            "setup": self.config.queuedata.envsetup,
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
        }

    async def stage_out(self) -> None:
        guids = self.payload.get("output_guids") or {}
        files = []
        for spec in self.job.outputs:
            d = spec.to_dict()
            d["guid"] = guids.get(spec.lfn) or spec.guid or str(uuid.uuid4())
            files.append(d)
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
