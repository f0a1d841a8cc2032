"""The new PanDA API (``<server>/api/v1/pilot/...`` and ``.../event/...``, docs/protocol.md
sections 1-4).

The server checks every parameter against its handler's signature and rejects the whole call
for an unknown name or a JSON value of the wrong type, so each field is converted to the type
the handler declares and anything it does not declare is left out. Transport, retries and
credentials are ``nodepilot.panda.http``'s; ``tls_context`` is re-exported for the launcher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from nodepilot.panda.auth import tls_context
from nodepilot.panda.client import ServerClient, UpdateReply, normalize_command
from nodepilot.panda.errors import ServerError
from nodepilot.panda.events import encode_updates, ranges_from_reply, statuses_from_reply, update_reply
from nodepilot.panda.http import PandaHttp, parse_json_object, snippet

log = logging.getLogger(__name__)

__all__ = ["ACQUIRE_FIELDS", "UPDATE_FIELDS", "ApiV1Client", "as_float", "as_int", "as_text", "tls_context",
           "translate"]

JSON = "application/json"
JSON_REQUEST = {"Accept": JSON, "Content-Type": JSON}
NO_JOBS_MESSAGE = "No jobs in PanDA"
SC_NO_JOBS = 20
_NULLS = ("", "NULL", "None", "null")


def as_int(value: Any) -> int:
    if isinstance(value, int):  # bool too: the server's isinstance check takes it as an int
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)  # exact, even beyond a float's precision
    return round(float(value))


def as_float(value: Any) -> float:
    return float(value)


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


Converter = Callable[[Any], Any]

# legacy name -> (v1 name, conversion); the v1 names are those of pilot_api.update_job
UPDATE_FIELDS: dict[str, tuple[str, Converter]] = {
    "jobId": ("job_id", as_int),
    "state": ("job_status", as_text),
    "xml": ("job_output_report", as_text),
    "metaData": ("meta_data", as_text),
    "pilotLog": ("pilot_log", as_text),
    "node": ("node", as_text),
    "siteName": ("site_name", as_text),
    "schedulerID": ("scheduler_id", as_text),
    "pilotID": ("pilot_id", as_text),
    "batchID": ("batch_id", as_text),
    "attemptNr": ("attempt_nr", as_int),
    "startTime": ("start_time", as_text),
    "endTime": ("end_time", as_text),
    "coreCount": ("core_count", as_int),
    "meanCoreCount": ("mean_core_count", as_int),
    "cpuConsumptionTime": ("cpu_consumption_time", as_int),
    "cpuConsumptionUnit": ("cpu_consumption_unit", as_text),
    "cpuConversionFactor": ("cpu_conversion_factor", as_float),
    "cpuArchitectureLevel": ("cpu_architecture_level", as_text),
    "nEvents": ("n_events", as_int),
    "nInputFiles": ("n_input_files", as_int),
    "jobMetrics": ("job_metrics", as_text),
    "pilotTiming": ("pilot_timing", as_text),
    "pilotErrorCode": ("pilot_error_code", as_int),
    "pilotErrorDiag": ("pilot_error_diag", as_text),
    "exeErrorCode": ("exe_error_code", as_int),
    "exeErrorDiag": ("exe_error_diag", as_text),
    "transExitCode": ("trans_exit_code", as_int),
    "stdout": ("stdout", as_text),
    "jobSubStatus": ("job_sub_status", as_text),
    "corruptedFiles": ("corrupted_files", as_text),
    "grid": ("grid", as_text),
    "sourceSite": ("source_site", as_text),
    "destinationSite": ("destination_site", as_text),
    # memory (kB) and I/O figures: maxRSS -> max_rss, totRBYTES -> tot_rbytes, ...
    **{legacy: (re.sub(r"^([a-z]+)([A-Z]+)$", lambda m: f"{m[1]}_{m[2].lower()}", legacy), as_int)
       for legacy in ("maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS",
                      "totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES",
                      "rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES")},
}

# legacy name -> (v1 name, conversion); the v1 names are those of pilot_api.acquire_jobs
ACQUIRE_FIELDS: dict[str, tuple[str, Converter]] = {
    "siteName": ("site_name", as_text),
    "computingElement": ("computing_element", as_text),
    "prodSourceLabel": ("prod_source_label", as_text),
    "diskSpace": ("disk_space", as_int),
    "mem": ("memory", as_int),
    "node": ("node", as_text),
    "resourceType": ("resource_type", as_text),
    "jobType": ("job_type", as_text),
    "taskID": ("task_id", as_int),
    "schedulerID": ("scheduler_id", as_text),
    "harvester_id": ("harvester_id", as_text),
    "worker_id": ("worker_id", as_int),
    "remaining_time": ("remaining_time", as_int),
    "n_jobs": ("n_jobs", as_int),
}


def _with_v1_names(table: dict[str, tuple[str, Converter]]) -> dict[str, tuple[str, Converter]]:
    """Callers may also use the v1 names themselves."""
    return {**{v1: (v1, conv) for v1, conv in table.values()}, **table}


UPDATE_MAP = _with_v1_names(UPDATE_FIELDS)
ACQUIRE_MAP = _with_v1_names(ACQUIRE_FIELDS)
# the v1 names of event/acquire_event_ranges (callers of acquire_event_ranges use them already)
EVENT_ACQUIRE_MAP: dict[str, tuple[str, Converter]] = {
    name: (name, as_int) for name in ("job_id", "jobset_id", "task_id", "n_ranges")}


def translate(fields: dict[str, Any], table: dict[str, tuple[str, Converter]],
              required: tuple[str, ...]) -> dict[str, Any]:
    """Legacy fields -> v1 parameters: renamed, converted; None, nulls and unknown names dropped."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        spec = table.get(name)
        if spec is None or value is None:
            continue
        v1, convert = spec
        if isinstance(value, str) and value.strip() in _NULLS and convert is not as_text:
            continue
        try:
            out[v1] = convert(value)
        except (TypeError, ValueError, OverflowError):
            if v1 in required:
                raise ServerError(f"{name}={value!r} cannot be sent ({convert.__name__} failed)") from None
            log.warning("dropping %s=%r: %s failed", name, value, convert.__name__)
    missing = [name for name in required if name not in out]
    if missing:
        raise ServerError(f"cannot call the server without {', '.join(missing)}")
    return out


def _status_code(method: str, data: dict[str, Any]) -> int:
    try:
        return int(data.get("StatusCode", 0))
    except (TypeError, ValueError):
        raise ServerError(f"{method}: StatusCode {data.get('StatusCode')!r} is not a number",
                          retryable=True) from None


class ApiV1Client(ServerClient):
    def __init__(self, base_url: str, timeout: float | None = None, retries: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, backoff_s: float | None = None,
                 ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/api/v1")
        self._http = PandaHttp(self.base_url, timeout, retries, transport, backoff_s, ca_file)
        self._spare_jobs: deque[dict[str, Any]] = deque()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- jobs -----------------------------------------------------------------------------
    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self._spare_jobs:
            return self._spare_jobs.popleft()
        body = translate({"n_jobs": 1, **params}, ACQUIRE_MAP, required=("site_name",))
        reply = await self._call("pilot/acquire_jobs", body)
        if not reply["success"]:
            message = str(reply.get("message") or "")
            if message.strip().lower() == NO_JOBS_MESSAGE.lower():
                return None
            raise ServerError(f"acquire_jobs refused: {message}", retryable=_retryable(message),
                              refused=_refuses_pilot(message))
        data = reply.get("data")
        if not isinstance(data, dict):
            raise ServerError(f"acquire_jobs: reply data is {type(data).__name__}, not an object", retryable=True)
        code = _status_code("acquire_jobs", data)
        if code == SC_NO_JOBS:
            return None
        if code != 0:
            raise ServerError(f"acquire_jobs: StatusCode {code}", retryable=True)
        jobs = data.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise ServerError("acquire_jobs: reply data.jobs is not a list of job objects")
        self._spare_jobs.extend(jobs[1:])  # more than asked for: run them later, do not drop them
        return jobs[0] if jobs else None

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        body = translate(fields, UPDATE_MAP, required=("job_id", "job_status"))
        what = f"update_job of job {body['job_id']} ({body['job_status']})"
        reply = await self._call("pilot/update_job", body)
        data = reply.get("data")
        if not reply["success"]:
            raise ServerError(f"{what} refused: {reply.get('message')}")
        if not isinstance(data, dict):
            raise ServerError(f"{what}: reply data is {type(data).__name__}, not an object", retryable=True)
        code = _status_code("update_job", data)
        if code != 0:
            diag = reply.get("message") or data.get("ErrorDiag") or ""
            raise ServerError(f"{what}: StatusCode {code} {diag}".rstrip(), retryable=True)
        return UpdateReply(command=normalize_command(data.get("command")), status_code=code, raw=reply)

    # --- event ranges ---------------------------------------------------------------------
    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        body = translate({"job_id": job_id, "jobset_id": jobset_id, "task_id": task_id, "n_ranges": n_ranges},
                         EVENT_ACQUIRE_MAP, required=("job_id", "jobset_id"))
        reply = await self._call("event/acquire_event_ranges", body)
        if not reply["success"]:
            message = str(reply.get("message") or "")
            raise ServerError(f"acquire_event_ranges of job {job_id} refused: {message}",
                              retryable=_retryable(message))
        return ranges_from_reply("acquire_event_ranges", reply.get("data"))

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        """One try per call (no blind retry): a failed call may have been applied (panda-server 1.0.4
        commits the update, then answers HTTP 500), so the caller asks ``get_event_range_statuses``
        what the server holds before it sends anything again."""
        what = "update_event_ranges"
        body = json.dumps({"event_ranges": encode_updates(ranges), "version": as_int(version)}).encode()
        url = f"{self.base_url}/api/v1/event/update_event_ranges"
        reply = _decode(what, (await self._http.post(url, body, JSON_REQUEST, what, retry_500=False)).content)
        return self._event_update_result(what, reply)

    async def get_event_range_statuses(self, job_id: int, task_id: int) -> dict[str, dict[str, Any]]:
        """``{range id: {"status", "error", "dialog"}}`` of one job as the server holds them. The key
        is ``panda_id``: what the server's code reads (its docstring says ``job_id``)."""
        what = f"get_event_range_statuses of job {job_id}"
        ids = json.dumps([{"task_id": as_int(task_id), "panda_id": as_int(job_id)}])
        content = (await self._http.get(f"{self.base_url}/api/v1/event/get_event_range_statuses",
                                        [("job_task_ids", ids)], {"Accept": JSON}, what)).content
        reply = _decode(what, content)
        if not reply["success"]:
            message = str(reply.get("message") or "")
            raise ServerError(f"{what} refused: {message}", retryable=_retryable(message))
        return statuses_from_reply(what, reply.get("data"), job_id)

    @staticmethod
    def _event_update_result(what: str, reply: dict[str, Any]) -> dict[str, Any]:
        if not reply["success"]:
            message = str(reply.get("message") or "")
            raise ServerError(f"{what} refused: {message}", retryable=_retryable(message))
        return update_reply(what, reply.get("data"))

    # --- the worker ------------------------------------------------------------------------
    async def update_worker_status(self, worker_id: str, harvester_id: str, status: str,
                                   node_id: str | None = None) -> None:
        body = {"worker_id": str(worker_id), "harvester_id": str(harvester_id), "status": status,
                **({"node_id": node_id} if node_id else {})}
        await self._expect_success("pilot/update_worker_status", body)

    async def update_worker_node(self, inventory: dict[str, Any]) -> None:
        await self._expect_success("pilot/update_worker_node", {k: v for k, v in inventory.items() if v is not None})

    async def update_worker_node_gpu(self, gpu: dict[str, Any]) -> None:
        await self._expect_success("pilot/update_worker_node_gpu", {k: v for k, v in gpu.items() if v is not None})

    async def _expect_success(self, method: str, body: dict[str, Any]) -> None:
        reply = await self._call(method, body)
        if not reply["success"]:
            message = str(reply.get("message") or "")
            raise ServerError(f"{method} refused: {message}", retryable=_retryable(message))

    # --- transport ------------------------------------------------------------------------
    async def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        what = method.rpartition("/")[2]
        reply = await self._http.post(f"{self.base_url}/api/v1/{method}", json.dumps(body).encode(),
                                      JSON_REQUEST, what)
        return _decode(what, reply.content)


def _retryable(message: str) -> bool:
    """Refusals worth retrying: the server timed out or its database failed."""
    return message.strip().lower().startswith(("timed out", "timeout", "database error"))


def _refuses_pilot(message: str) -> bool:
    """The refusals of the pilot itself (panda-server's request validation): no TLS client
    certificate, no production/pilot role."""
    return message.strip().lower().startswith(("ssl secure connection is required", "production or pilot role"))


def _checked(what: str, reply: Any, content: bytes) -> dict[str, Any]:
    if not isinstance(reply, dict) or not isinstance(reply.get("success"), bool):
        raise ServerError(f"{what}: reply is not {{success, message, data}}: {snippet(content)!r}", retryable=True)
    return reply


def _decode(what: str, content: bytes) -> dict[str, Any]:
    return _checked(what, parse_json_object(what, content), content)
