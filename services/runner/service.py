"""The runner: starts a job's payload, watches it end, reports how it ended, kills it on request.

It serves ``runner:requests`` (contract in docs/bus.md). A run request's handler returns only when
the payload has ended and ``payload_finished`` was emitted, so the entry stays pending meanwhile:
a runner that dies leaves it to its successor, which must never start the payload twice. The
state per request is kept in ``runner:job:<id>`` (hash, field = request_id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute

from nodepilot import bus, experiments
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.service import Service
from nodepilot.webapi import json_route, number
from services.runner.adoption import adopt, find_shim, host_tag, kill_orphaned, process_identity
from services.runner.cgroup import remove_empty_leftovers
from services.runner.execute import (
    Ended,
    Payload,
    ended_from_status,
    finish_cleanups,
    payload_env,
    read_status,
    start,
    status_file,
)
from services.runner.isolation import Isolation, write_note
from services.runner.metrics import collector as metrics_collector
from services.runner.metrics import exit_label
from services.runner.report import Outcome, outcome
from services.runner.request import DEFAULT_GRACE_S, BadRequest, RunRequest, failed, grace, parse_run
from services.runner.sampler import (
    Sample,
    UsageSampler,
    summarize,
)

log = logging.getLogger(__name__)

CONCURRENCY = 64  # run handlers hold their slot for the payload's whole life: kills need free ones
STATE_TTL_S = 7 * 86400
STOP_GRACE_S = 3.0  # the runner itself stops: its payloads get this long after SIGTERM
RETRY_S = 2.0  # between attempts to read the stream again after Redis failed
EXIT_PREFIX = "exit "  # bus.RUNNER_TALLY's fields: "finished", "failed", and "exit <exit_label>"


class RunnerService(Service):
    name = "runner"
    # its payloads' stop (STOP_GRACE_S, then SIGKILL), their reports and their cgroups' removal, all before
    # the launcher's SIGKILL (launcher.STOP_GRACE): cut short, they would outlive the runner
    stop_wait_s = STOP_GRACE_S + 6.0
    threads = CONCURRENCY + 8  # a thread per running payload blocks in wait4, and its sampler needs one at times

    def __init__(self, config: PilotConfig) -> None:
        super().__init__(config)
        self.payloads: dict[str, Payload] = {}  # by request_id
        self._busy: dict[str, asyncio.Event] = {}  # run requests in progress here, by request_id
        self._shutting_down = False
        self.host = host_tag()
        self.counts = {"finished": 0, "failed": 0}
        self.exits: Counter[str] = Counter()  # payload_finished by exit code ("signal N", "none")
        self.isolation = Isolation(config)

    def workers(self) -> list[Any]:
        return [self._consume(), self.isolation.ready()]  # the preflight runs at once, off the job's path

    async def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"payloads": [{"job_id": p.job_id, "request_id": p.request_id, "pid": p.pid,
                              "running_s": round(now - p.started, 3), "killing": bool(p.kill_reason)}
                             for p in self.payloads.values()], **self.counts,
                "isolation": self.isolation.status()}

    def add_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(metrics_collector(lambda: len(self.payloads), self.exits))

    def routes(self) -> list[BaseRoute]:
        async def kill(request: Request) -> dict[str, Any]:
            job_id = number(request.path_params["job_id"], "job_id", int)
            grace_seconds = number(request.query_params.get("grace_seconds"), "grace_seconds", float,
                                   DEFAULT_GRACE_S)
            reason = request.query_params.get("reason", "kill requested through the runner's API")
            request_id = f"api:kill:{uuid.uuid4().hex[:8]}"
            pids = await self._kill(job_id, request_id, grace(grace_seconds), reason)
            if not pids:
                raise HTTPException(404, f"no payload of job {job_id} is running")
            return {"job_id": job_id, "request_id": request_id, "pids": pids}

        return [json_route("/kill/{job_id}", kill, methods=("POST",))]

    async def _consume(self) -> None:
        # a failed read is retried in place: the payloads keep running and their handlers waiting
        consumer = self.track(bus.Consumer(self.redis, bus.RUNNER_REQUESTS, "runner", "runner", self.handle,
                                           concurrency=CONCURRENCY, retry_s=RETRY_S, on_error=self.answer_failure))
        await asyncio.to_thread(remove_empty_leftovers)  # of a runner that was killed (SIGKILL: no clean-up)
        try:
            await self._load_tally()
            await consumer.run()
        finally:
            await self._stop_payloads()
            await consumer.aclose()
            # the killed payloads' cgroups go with the runner, not minutes later (or never)
            await finish_cleanups(2.0)

    async def _load_tally(self) -> None:
        """The pilot's payloads so far, counted by the runners before this one (it retires between jobs:
        nodepilot/demand.py), so that its status and metrics count for the whole pilot."""
        try:
            tally = await self.redis.hgetall(bus.RUNNER_TALLY)
        except RedisError as exc:  # figures only: the requests are what matters
            log.warning("the pilot's payload counts cannot be read (%s): counting from zero", exc)
            return
        for name, value in tally.items():
            if name.startswith(EXIT_PREFIX) and value.isdigit():
                self.exits[name.removeprefix(EXIT_PREFIX)] = int(value)
            elif name in self.counts and value.isdigit():
                self.counts[name] = int(value)

    async def _stop_payloads(self) -> None:
        """The runner stops: kill its payloads and let their handlers report them (bounded)."""
        self._shutting_down = True
        waiting = [self._busy[rid].wait() for rid in self.payloads if rid in self._busy]
        for payload in list(self.payloads.values()):
            payload.kill(STOP_GRACE_S, "the runner stopped")
        if waiting:
            _done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waiting],
                                               timeout=STOP_GRACE_S + 3)
            for task in pending:
                task.cancel()

    # --- one request ---------------------------------------------------------------------
    async def answer_failure(self, message: dict[str, Any], exc: BaseException) -> None:
        """A run request whose handler raised gets its payload_finished with a pilot error code."""
        job_id, request_id = bus.job_id_of(message.get("job_id")), message.get("request_id")
        if job_id is None or message.get("action") != "run":
            return  # kills and signals are not waited for
        request_id = request_id if isinstance(request_id, str) else ""
        if request_id and (await self._state(job_id, request_id)).get("state") == "finished":
            return  # answered already
        diag = self.internal_error(f"run request {request_id}", exc)
        await self._finish(job_id, request_id, Outcome(ErrorCode.PILOT_EXCEPTION, diag))

    async def handle(self, entry_id: str, message: dict[str, Any]) -> None:
        job_id, action = bus.job_id_of(message.get("job_id")), message.get("action")
        request_id = message.get("request_id")
        request_id = request_id if isinstance(request_id, str) else ""
        if job_id is None:
            log.error("runner request %s dropped (no valid job_id): %.300r", entry_id, message)
            return
        if action == "run":
            await self._run_once(job_id, request_id, message)
        elif action == "kill":
            await self._kill_request(job_id, request_id, message)
        elif action == "signal":
            await self._signal_request(job_id, request_id, message)
        else:
            await self._finish(job_id, request_id, failed(f"malformed runner request: unknown action {action!r}"))

    async def _run_once(self, job_id: int, request_id: str, message: dict[str, Any]) -> None:
        busy = self._busy.get(request_id) if request_id else None
        if busy is not None:  # delivered again while it runs here: answered when it ends
            await busy.wait()
            return
        if request_id:
            self._busy[request_id] = asyncio.Event()  # before any await: no second start
        try:
            state = await self._state(job_id, request_id)
            if state.get("state") == "finished":
                log.info("run request %s of job %s was handled already", request_id, job_id)
            elif state:
                await self._recover(job_id, request_id, state, message)
            else:
                await self._run(job_id, request_id, message)
        finally:
            if request_id:
                self._busy.pop(request_id).set()

    async def _run(self, job_id: int, request_id: str, message: dict[str, Any]) -> None:
        try:
            request = parse_run(message)
        except BadRequest as exc:
            log.error("job %s: malformed run request %s: %s", job_id, request_id, exc)
            await self._finish(job_id, request_id, failed(f"malformed run request: {exc}"))
            return
        await self._save(job_id, request_id, {"state": "starting"})
        choice = await self.isolation.choose(request.workdir, request.image)
        if choice.error:
            log.error("job %s: %s", job_id, choice.error)
            await self._finish(job_id, request_id, Outcome(choice.code, clip_diag(choice.error)))
            return
        write_note(request.workdir, choice)
        (log.warning if choice.mode == "none" else log.info)("job %s: isolation %s: %s", job_id, choice.mode,
                                                             choice.reason)
        env = payload_env(os.environ, {**dict(choice.env), **request.env})
        try:
            payload = start(job_id, request_id, request.workdir, request.script, env, prefix=choice.prefix,
                            isolation=choice.mode, status_path=status_file(self.config.run_dir, job_id, request_id))
        except (OSError, ValueError) as exc:
            log.error("job %s: cannot start the payload: %r", job_id, exc)
            await self._finish(job_id, request_id, failed(f"cannot start the payload: {exc}"))
            return
        log.info("job %s: payload started, pid %s", job_id, payload.pid)
        await self._supervise(payload, request, message, announce=True)

    async def _supervise(self, payload: Payload, request: RunRequest, message: dict[str, Any],
                         announce: bool) -> None:
        """Until the payload has ended (sampling it meanwhile); then its payload_finished."""
        job_id, request_id = payload.job_id, payload.request_id
        self.payloads[request_id] = payload
        sampler = UsageSampler(self.redis, job_id, payload.pid, request.workdir, request.sample_interval,
                               payload.tracked_pids)
        sampler.start()
        ended: Ended | None = None
        try:
            if announce:
                await self._announce(payload)
            ended = await payload.wait()
        except BaseException as exc:  # stopped, or a bug: the payload is not left running unwatched
            payload.kill_now("the runner stopped" if isinstance(exc, asyncio.CancelledError)
                             else f"the runner failed: {exc!r}")
            raise
        finally:
            self.payloads.pop(request_id, None)
            if ended is None:
                sampler.cancel()
        samples = await sampler.stop()
        await self._conclude(job_id, request_id, request, message, ended, payload.start_time, payload.isolation,
                             samples, payload.kill_reason)

    async def _conclude(self, job_id: int, request_id: str, request: RunRequest, message: dict[str, Any],
                        ended: Ended, start_time: float | None, isolation: str, samples: list[Sample] | None = None,
                        kill_reason: str = "") -> None:
        result = await asyncio.to_thread(outcome, request.workdir, ended.exit_code, ended.signal, ended.oom_kills,
                                         experiments.report_reader(message.get("experiment")))
        if result.pilot_error_code and kill_reason:
            result.pilot_error_diag = clip_diag(f"{result.pilot_error_diag} ({kill_reason})")
            if self._shutting_down:
                result.pilot_error_code = ErrorCode.PILOT_EXCEPTION
        log.info("job %s: payload ended: exit %s, signal %s, pilot code %s", job_id, ended.exit_code,
                 ended.signal, result.pilot_error_code)
        await self._finish(job_id, request_id, result, start_time, ended, samples, isolation)
        status_file(self.config.run_dir, job_id, request_id).unlink(missing_ok=True)  # reported: not needed

    async def _announce(self, payload: Payload) -> None:
        """Record and announce the start; a Redis failure here must not orphan the payload."""
        try:
            await self._save(payload.job_id, payload.request_id, {
                "state": "started", "pid": payload.pid, "start_time": payload.start_time,
                "create_time": process_identity(payload.pid), "host": self.host, "isolation": payload.isolation,
            })
            await bus.emit(self.redis, payload.job_id, self.name, "payload_started",
                           request_id=payload.request_id, pid=payload.pid, start_time=payload.start_time)
        except Exception:
            log.exception("job %s: cannot announce the payload's start", payload.job_id)

    async def _recover(self, job_id: int, request_id: str, state: dict[str, Any], message: dict[str, Any]) -> None:
        """A run a previous runner started, never started twice: a payload still running is adopted
        (its shim tells how it ended); one that ended meanwhile left its status; one never started
        (the runner died before starting it) starts now. Else the result is lost: kill what is left."""
        pid = state.get("pid") if isinstance(state.get("pid"), int) else None
        start_time = state.get("start_time") if isinstance(state.get("start_time"), float) else None
        path = status_file(self.config.run_dir, job_id, request_id)
        try:
            request = parse_run(message)
        except BadRequest:
            request = None
        if request is not None and (pid is None or state.get("host") == self.host):
            shim = pid if pid is not None else await asyncio.to_thread(find_shim, path)
            isolation = state.get("isolation") if isinstance(state.get("isolation"), str) else "none"
            payload = adopt(job_id, request_id, shim, process_identity(shim) if pid is None else
                            state.get("create_time"), path, isolation) if shim else None
            if payload is not None:
                log.warning("job %s: the runner restarted while the payload ran: adopting it (pid %s)", job_id, shim)
                payload.start_time = state.get("start_time") or payload.start_time
                await self._supervise(payload, request, message, announce=pid is None)
                return
            status = read_status(path)
            if status is not None:
                log.warning("job %s: the payload ended while no runner watched it: status %s", job_id, status)
                await self._conclude(job_id, request_id, request, message, ended_from_status(status, time.time()),
                                     start_time, isolation)
                return
            if pid is None:
                log.warning("job %s: the runner restarted before the payload started: starting it now", job_id)
                await self._run(job_id, request_id, message)
                return
        killed = False
        if pid and state.get("host") == self.host:
            killed = await kill_orphaned(pid, state.get("create_time"), DEFAULT_GRACE_S)
        if pid is None:
            diag = "the runner restarted while starting the payload; whether it ran is unknown"
        else:
            diag = f"the runner restarted while the payload (pid {pid}) ran; the payload's result was lost"
            diag += "; its processes were killed" if killed else ""
        log.warning("job %s: %s", job_id, diag)
        await self._finish(job_id, request_id, Outcome(ErrorCode.PILOT_EXCEPTION, diag), start_time)

    async def _kill_request(self, job_id: int, request_id: str, message: dict[str, Any]) -> None:
        if request_id and (await self._state(job_id, request_id)).get("state") == "kill_sent":
            return
        reason = message.get("reason")
        reason = f"killed: {reason}" if isinstance(reason, str) and reason else "kill requested"
        await self._kill(job_id, request_id, grace(message.get("grace_seconds", DEFAULT_GRACE_S)), reason)
        if request_id:
            await self._save(job_id, request_id, {"state": "kill_sent"})

    async def _signal_request(self, job_id: int, request_id: str, message: dict[str, Any]) -> None:
        """A signal the payload may act on (e.g. SIGUSR1: the slot ends soon); it is not a kill."""
        try:
            signum = signal.Signals(message.get("signum"))
        except ValueError:
            log.error("job %s: signal request %s with an invalid signum %r", job_id, request_id, message.get("signum"))
            return
        targets = self._payloads_of(job_id)
        for payload in targets:
            log.info("job %s: sending %s to payload %s: %s", job_id, signum.name, payload.pid, message.get("reason"))
            payload.notify(signum)
        await bus.emit(self.redis, job_id, self.name, "payload_signal_sent", request_id=request_id or None,
                       signum=int(signum), pids=[p.pid for p in targets])

    def _payloads_of(self, job_id: int) -> list[Payload]:
        return [p for p in self.payloads.values() if p.job_id == job_id]

    async def _kill(self, job_id: int, request_id: str, grace: float, reason: str) -> list[int]:
        targets = self._payloads_of(job_id)
        for payload in targets:
            log.info("job %s: killing payload %s (grace %s s): %s", job_id, payload.pid, grace, reason)
            payload.kill(grace, reason)
        if not targets:
            log.info("job %s: kill request %s, but no payload of it runs here", job_id, request_id)
        pids = [p.pid for p in targets]
        await bus.emit(self.redis, job_id, self.name, "payload_kill_sent", request_id=request_id or None,
                       killed=bool(pids), pids=pids)
        return pids

    # --- state and events ----------------------------------------------------------------
    async def _state(self, job_id: int, request_id: str) -> dict[str, Any]:
        if not request_id:
            return {}
        raw = await self.redis.hget(bus.service_state_key(self.name, job_id), request_id)
        try:
            state = json.loads(raw) if raw else {}
        except ValueError:
            state = {"state": "unknown"}
        return state if isinstance(state, dict) else {"state": "unknown"}

    async def _save(self, job_id: int, request_id: str, state: dict[str, Any]) -> None:
        if not request_id:
            return
        key = bus.service_state_key(self.name, job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, request_id, json.dumps(state))
            pipe.expire(key, STATE_TTL_S)
            await pipe.execute()

    async def _finish(self, job_id: int, request_id: str, result: Outcome, start_time: float | None = None,
                      ended: Ended | None = None, samples: list[Sample] | None = None,
                      isolation: str | None = None) -> None:
        """Emit payload_finished and mark the request finished in one transaction."""
        end_time = ended.end_time if ended else time.time()
        wall_seconds = round(end_time - start_time, 3) if start_time else 0.0
        usage = summarize(samples or [], ended.cpu_seconds if ended else 0.0, ended.max_rss_kb if ended else 0,
                          wall_seconds)
        fields = {
            "request_id": request_id or None,
            "exit_code": ended.exit_code if ended else None, "signal": ended.signal if ended else None,
            "start_time": start_time, "end_time": end_time, "wall_seconds": wall_seconds,
            **usage.to_dict(), **result.to_dict(), "isolation": isolation,
        }
        outcome_name, label = "failed" if result.pilot_error_code else "finished", exit_label(ended)
        self.counts[outcome_name] += 1
        self.exits[label] += 1
        key = bus.service_state_key(self.name, job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await bus.emit(pipe, job_id, self.name, "payload_finished", **fields)  # queued, not sent yet
            pipe.hincrby(bus.RUNNER_TALLY, outcome_name, 1)
            pipe.hincrby(bus.RUNNER_TALLY, f"{EXIT_PREFIX}{label}", 1)
            if request_id:
                pipe.hset(key, request_id, json.dumps({"state": "finished", "end_time": end_time,
                                                       "pilot_error_code": result.pilot_error_code}))
                pipe.expire(key, STATE_TTL_S)
            await pipe.execute()
