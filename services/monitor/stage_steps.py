"""A job's stager steps (stage-in, stage-out of the outputs, the log), mixed into ``JobRun``: each
publishes one request on ``stager:requests`` and waits for its answer on the job's stream."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from nodepilot import bus, deadlines, demand, experiments
from nodepilot.errors import ErrorCode, clip_diag
from services.monitor.catalog import write_input_catalog
from services.monitor.parts import JobParts

log = logging.getLogger(__name__)


class StageSteps(JobParts):
    staged: list[dict[str, Any]]
    partial: bool

    if TYPE_CHECKING:  # JobRun's
        def set_step(self, step: str) -> None: ...
        def experiment(self) -> experiments.Experiment: ...

    def _endpoints(self, activity: str) -> list[dict[str, str]]:
        """Every endpoint of the activity: the stager decides (job and queue) whether alternatives are used."""
        return [{"name": e.name, "url": e.url} for e in self.config.queuedata.endpoints_for(activity)]

    async def _stage(self, kind: str, activity: str, **fields: Any) -> dict[str, Any]:
        request_id = self._request_id(kind)
        self.set_step(kind)
        endpoints = self._endpoints(activity)
        with demand.need("stager"):
            await bus.publish(self.r, bus.STAGER_REQUESTS, {
                "kind": kind, "job_id": self.job.panda_id, "request_id": request_id,
                "workdir": str(self.workdir), "endpoints": endpoints, "task_id": self.job.task_id,
                **({"alt_stageout": self.job.alt_stage_out} if kind != "stagein" else {}), **fields,
            })
            return await self.wait_for(request_id, f"{kind}_done", self._stage_deadline(fields, len(endpoints)))

    def _stage_deadline(self, fields: dict[str, Any], endpoints: int) -> float:
        """The stager's own bounds over the request's files: every copy timed out on every attempt."""
        files = fields.get("files") or []
        sizes = [f.get("fsize") for f in files] if files else [deadlines.LOG_SIZE_GUESS]
        stager = self.config.queuedata.stager if isinstance(self.config.queuedata.stager, dict) else {}
        attempts, cap = stager.get("attempts"), stager.get("backoff_cap_s")
        return deadlines.stage_deadline(
            [s if isinstance(s, int) else None for s in sizes], endpoints + 1,  # + 1: an alternative endpoint
            attempts if isinstance(attempts, int) and attempts > 0 else deadlines.STAGER_ATTEMPTS,
            float(cap) if isinstance(cap, int | float) and cap >= 0 else deadlines.STAGER_BACKOFF_CAP_S)

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
