"""The event-service client: serves event ranges to a job's payload, sends each range's output to
the stager as soon as it exists, reports range statuses back to the source (PanDA server or a
standalone ranges file) and, at the end, reports every range it still holds.

It serves ``eventclient:requests`` (contract in README.md). A start request's handler returns
only when its job has ended, so the entry stays pending meanwhile: a restarted eventclient gets
it again and carries on from the state in Redis (``ranges.py``). Any stop of the service ends
the jobs it serves cleanly (reports everything, ``es_done``); only a crash leaves them to the
next instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode
from nodepilot.service import Service
from services.eventclient import metrics
from services.eventclient.contract import BadRequest, StartRequest, summary
from services.eventclient.ranges import RangeStore, meta_key
from services.eventclient.session import JobSession

log = logging.getLogger(__name__)

CONCURRENCY = 64  # start handlers hold their slot for the job's whole life: finishes need free ones
STOP_REASON = "the eventclient is stopping"


class EventClientService(Service):
    name = "eventclient"

    def __init__(self, config: PilotConfig) -> None:
        super().__init__(config)
        self.sessions: dict[int, JobSession] = {}

    def workers(self) -> list[Any]:
        return [self._consume()]

    def main(self) -> Coroutine[Any, Any, int]:
        return self._until_stopped()

    async def status(self) -> dict[str, Any]:
        return {"jobs": {str(job_id): s.status() for job_id, s in self.sessions.items()}}

    def add_metrics(self, registry: Any) -> None:
        registry.register(metrics.collector(
            lambda: {job_id: session.counts() for job_id, session in list(self.sessions.items())}))

    async def _consume(self) -> None:
        consumer = bus.Consumer(self.redis, bus.EVENTCLIENT_REQUESTS, self.name, self.name, self.handle,
                                concurrency=CONCURRENCY, on_error=self.answer_failure)
        await self.consume_or_stop(consumer)

    async def _until_stopped(self) -> int:
        """Runs while the service does; a stop ends every job served here before the workers go."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await self._finish_all(STOP_REASON)
            raise
        return 0

    async def _finish_all(self, reason: str) -> None:
        sessions = list(self.sessions.values())
        if sessions:
            log.info("ending %d event-service jobs: %s", len(sessions), reason)
            await asyncio.gather(*(self._end(s, s.start.request_id, reason) for s in sessions),
                                 return_exceptions=True)

    # --- requests ------------------------------------------------------------------------
    async def answer_failure(self, message: dict[str, Any], exc: BaseException) -> None:
        """A request whose handler raised: ``es_ready`` (start) or ``es_done`` (finish) with an error."""
        job_id, action = bus.job_id_of(message.get("job_id")), message.get("action")
        request_id = message.get("request_id")
        if job_id is None or not isinstance(request_id, str):
            return
        diag = self.internal_error(f"{action} request {request_id}", exc)
        if action == "start":
            await bus.emit(self.redis, job_id, self.name, "es_ready", request_id=request_id, ok=False, socket="",
                           error_code=int(ErrorCode.ES_FATAL), diag=diag)
        elif action == "finish":
            await bus.emit(self.redis, job_id, self.name, "es_done", request_id=request_id, reason="internal error",
                           **summary(error_code=ErrorCode.PILOT_EXCEPTION, diag=diag))

    async def handle(self, entry_id: str, message: dict[str, Any]) -> None:
        job_id, action, request_id = message.get("job_id"), message.get("action"), message.get("request_id")
        if (not isinstance(job_id, int) or isinstance(job_id, bool) or job_id <= 0
                or action not in ("start", "finish") or not isinstance(request_id, str)):
            log.error("eventclient request %s dropped (no job_id, request_id or known action): %.300r",
                      entry_id, message)
            return
        if action == "start":
            await self._start(job_id, request_id, message)
        else:
            await self._finish(job_id, request_id, str(message.get("reason") or "finish"))

    async def _start(self, job_id: int, request_id: str, message: dict[str, Any]) -> None:
        running = self.sessions.get(job_id)
        if running is not None:  # a second start for a job being served: same API
            await self._ready(job_id, request_id, running)
            return
        try:
            start = StartRequest.parse(job_id, message)
        except BadRequest as exc:
            diag = f"malformed start request: {exc}"
            log.error("job %s: %s", job_id, diag)
            result = summary(error_code=ErrorCode.ES_FATAL, diag=diag)
            await RangeStore(self.redis, job_id).set_meta(start=json.dumps({"request_id": request_id}),
                                                          summary=json.dumps(result))
            await bus.emit(self.redis, job_id, self.name, "es_ready", request_id=request_id, ok=False,
                           socket="", error_code=result["error_code"], diag=result["diag"])
            return
        session = JobSession(self.redis, self.config, start)
        ended = await session.previous_summary()
        if ended is not None:  # delivered again after the end (a stop of the service, a replay)
            log.info("job %s: start %s was served to its end already", job_id, request_id)
            await bus.emit(self.redis, job_id, self.name, "es_ready", request_id=request_id, ok=False, socket="",
                           error_code=ended["error_code"], diag=f"the job's event service ended already: "
                                                                f"{ended['diag']}")
            return
        self.sessions[job_id] = session
        try:
            await session.open()
            await self._ready(job_id, request_id, session)
            await session.result
        finally:
            if self.sessions.get(job_id) is session:
                del self.sessions[job_id]

    async def _ready(self, job_id: int, request_id: str, session: JobSession) -> None:
        failure = session.result.result() if session.result.done() else None
        await bus.emit(self.redis, job_id, self.name, "es_ready", request_id=request_id, ok=failure is None,
                       socket="" if failure else str(session.socket_path), env={} if failure else session.env,
                       error_code=failure["error_code"] if failure else 0, diag=failure["diag"] if failure else "")

    async def _finish(self, job_id: int, request_id: str, reason: str) -> None:
        session = self.sessions.get(job_id)
        if session is not None:
            await self._end(session, request_id, reason)
            return
        meta = await self.redis.hgetall(meta_key(job_id))
        if "summary" in meta:  # ended already (a stop of the service, or this request redelivered)
            await self._answer(job_id, request_id, json.loads(meta["summary"]), reason)
        elif "start" in meta:  # its start handler is gone: end it from the state in Redis
            session = JobSession(self.redis, self.config, StartRequest.parse(job_id, json.loads(meta["start"])))
            self.sessions[job_id] = session
            try:
                await session.open()
                await self._end(session, request_id, reason)
            finally:
                self.sessions.pop(job_id, None)
        else:
            result = summary(error_code=ErrorCode.ES_NO_EVENTS, diag="no event-service start request for this job")
            await self._answer(job_id, request_id, result, reason)

    async def _end(self, session: JobSession, request_id: str, reason: str) -> None:
        await self._answer(session.job_id, request_id, await session.finish(reason), reason)

    async def _answer(self, job_id: int, request_id: str, result: dict[str, Any], reason: str) -> None:
        """One ``es_done`` per request id (a redelivered request is not answered twice)."""
        answered = f"answered:{request_id}"
        if await self.redis.hexists(meta_key(job_id), answered):
            return
        await bus.emit(self.redis, job_id, self.name, "es_done", request_id=request_id, reason=reason, **result)
        await RangeStore(self.redis, job_id).set_meta(**{answered: "1"})
