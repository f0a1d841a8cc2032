"""An event-service job's steps, mixed into ``JobRun``: the eventclient serves ranges to the payload
and stages each output out as it comes; the job's outcome is what the server took."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nodepilot import bus, deadlines, demand
from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.jumbo import SHARE_MARK
from services.monitor.parts import JobParts

log = logging.getLogger(__name__)

ES_BATCH = 10


class EventServiceSteps(JobParts):
    es_socket: str
    kill_reason: tuple[int, str] | None

    if TYPE_CHECKING:  # JobRun's
        def _endpoints(self, activity: str) -> list[dict[str, Any]]: ...
        async def run_payload(self, extra_env: dict[str, str] | None = None) -> None: ...

    async def run_event_service(self) -> None:
        """The eventclient serves ranges to the payload and stages each output out as it comes (by the stager)."""
        with demand.need("eventclient", "stager"):
            await self._event_service()

    async def _event_service(self) -> None:
        job = self.job
        start_id = self._request_id("es-start")
        await bus.publish(self.r, bus.EVENTCLIENT_REQUESTS, {
            "action": "start", "job_id": job.panda_id, "request_id": start_id, "workdir": str(self.workdir),
            "jobset_id": job.jobset_id or 0, "task_id": job.task_id, "batch": ES_BATCH,
            **{k: v for k, v in self.config.queuedata.es.items() if k in ("batch", "zip_outputs", "zip_seconds")},
            "endpoints": self._endpoints("es_events"), "objstore_id": self._objstore_id(),
            "shared": SHARE_MARK in job.raw,  # a jumbo job's share: the job's other ranges are other workers'
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
        # the ranges in hand are reported and their outputs staged out: a batch's stage-out at most
        deadline = deadlines.ANSWER_S + deadlines.stage_deadline([None] * ES_BATCH)
        done = await self.wait_for(finish_id, "es_done", deadline)
        self.payload["n_events"] = self.payload.get("n_events") or done.get("n_events")
        self.result.files_out = int(done.get("finished") or 0)
        log.info("job %s: event ranges: %s finished, %s failed", job.panda_id, done.get("finished"),
                 done.get("failed"))
        if done.get("error_code"):
            self.result.fail(done["error_code"], done.get("diag") or "event service failed")
        elif done.get("unreported"):  # finished, and the diag says how many ranges the server did not take
            self.result.pilot_error_diag = clip_diag(done.get("diag") or "")

    def _objstore_id(self) -> int | None:
        """The numeric id of the endpoint event-service outputs go to (the server's objstoreID)."""
        ids = [e.id for e in self.config.queuedata.endpoints_for("es_events") if e.id is not None]
        configured = self.config.queuedata.es.get("objstore_id")
        return ids[0] if ids else None if configured in (None, "") else int(configured)

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
