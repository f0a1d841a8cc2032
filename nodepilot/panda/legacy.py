"""The legacy PanDA API (``<server>/server/panda/<method>``, docs/protocol.md sections 1-4).

Fields keep the legacy names callers use. The legacy server binds the parameters to its
functions' keyword arguments (an unknown one is an HTTP 500) and converts the values itself, so
each call sends only the names its function takes, as strings (a form) or JSON values (gzipped
JSON body). Replies are JSON when asked for, but URL-encoded text (every value a string) is read
as well.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from nodepilot.panda.client import ServerClient, UpdateReply, normalize_command
from nodepilot.panda.errors import ServerError
from nodepilot.panda.events import encode_updates, ranges_from_reply, update_reply
from nodepilot.panda.http import PandaHttp, decode_value, parse_json_object, snippet

log = logging.getLogger(__name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# status codes of pandaserver/jobdispatcher/Protocol.py
SC_SUCCESS, SC_TIMEOUT, SC_NO_JOBS, SC_FAILED = 0, 10, 20, 30
SC_INVALID_TOKEN, SC_ROLE, SC_PERMISSION, SC_MISSING_KEY = 50, 60, 70, 80
REFUSALS = {SC_INVALID_TOKEN: "invalid token", SC_ROLE: "no production/pilot role",
            SC_PERMISSION: "permission denied", SC_MISSING_KEY: "key missing"}
VALID_JOB_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")

# the keyword arguments of pandaserver/jobdispatcher/JobDispatcher.py's getJob and updateJob
GET_JOB_NAMES = frozenset((
    "siteName", "token", "timeout", "cpu", "mem", "diskSpace", "prodSourceLabel", "node", "computingElement",
    "AtlasRelease", "prodUserID", "getProxyKey", "countryGroup", "workingGroup", "allowOtherCountry", "taskID",
    "nJobs", "background", "resourceType", "harvester_id", "worker_id", "schedulerID", "jobType", "viaTopic"))
UPDATE_JOB_NAMES = frozenset((
    "jobId", "state", "token", "transExitCode", "pilotErrorCode", "pilotErrorDiag", "timestamp", "timeout", "xml",
    "node", "workdir", "cpuConsumptionTime", "cpuConsumptionUnit", "remainingSpace", "schedulerID", "pilotID",
    "siteName", "messageLevel", "pilotLog", "metaData", "cpuConversionFactor", "exeErrorCode", "exeErrorDiag",
    "pilotTiming", "computingElement", "startTime", "endTime", "nEvents", "nInputFiles", "batchID", "attemptNr",
    "jobMetrics", "stdout", "jobSubStatus", "coreCount", "maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS",
    "avgVMEM", "avgSWAP", "avgPSS", "totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES", "rateRCHAR", "rateWCHAR",
    "rateRBYTES", "rateWBYTES", "corruptedFiles", "meanCoreCount", "cpu_architecture_level"))
# the server converts these with int() (a "2.5" there is a failed call), so numbers go as integers
INTEGER_NAMES = frozenset((
    "jobId", "attemptNr", "transExitCode", "pilotErrorCode", "exeErrorCode", "nEvents", "nInputFiles", "coreCount",
    "cpuConsumptionTime", "maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS",
    "totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES", "rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES",
    "mem", "diskSpace", "cpu", "taskID", "nJobs", "worker_id", "pandaID", "jobsetID", "nRanges", "version"))


def legacy_value(name: str, value: Any) -> Any:
    """A value as the legacy server reads it: text and numbers as they are (integral floats and the
    numbers it parses with int() as integers), objects as JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf") and (
            value.is_integer() or name in INTEGER_NAMES):
        return round(value)
    return value


def legacy_params(fields: dict[str, Any], names: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    """The fields the server's function takes, values prepared; None dropped, names kept."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name not in names:
            log.warning("not sending %s=%r: the legacy server does not take it", name, value)
            continue
        out[name] = legacy_value(name, value)
    missing = [name for name in required if name not in out]
    if missing:
        raise ServerError(f"cannot call the server without {', '.join(missing)}")
    return out


def parse_reply(what: str, content: bytes) -> tuple[dict[str, Any], int]:
    """A legacy reply, JSON or URL-encoded, and its StatusCode. A reply without a StatusCode is a
    refusal in plain text (``production or pilot role is required``) or a garbled reply."""
    if content.lstrip().startswith(b"{"):
        reply = parse_json_object(what, content)
    else:
        try:
            reply = dict(parse_qsl(content.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            reply = {}
    if "StatusCode" not in reply:
        text = snippet(content)
        refused = text.upper().startswith("ERROR") or "role" in text or "DN" in text
        raise ServerError(f"{what}: {'refused' if refused else 'reply without StatusCode'}: {text!r}",
                          retryable=not refused, refused=refused)
    try:
        return reply, int(reply["StatusCode"])
    except (TypeError, ValueError):
        raise ServerError(f"{what}: StatusCode {reply['StatusCode']!r} is not a number", retryable=True) from None


def status_error(what: str, code: int, reply: dict[str, Any]) -> ServerError:
    diag = reply.get("errorDialog") or REFUSALS.get(code, "")
    return ServerError(f"{what}: StatusCode {code} {diag}".rstrip(), retryable=code not in REFUSALS,
                       refused=code in REFUSALS)


class LegacyClient(ServerClient):
    def __init__(self, base_url: str, timeout: float | None = None, retries: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, backoff_s: float | None = None,
                 json_body: bool = False, ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/server/panda")
        self.json_body = json_body
        self._http = PandaHttp(self.base_url, timeout, retries, transport, backoff_s, ca_file)
        self._spare_jobs: deque[dict[str, Any]] = deque()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- jobs -----------------------------------------------------------------------------
    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self._spare_jobs:
            return self._spare_jobs.popleft()
        reply, code = await self._call("getJob", legacy_params(params, GET_JOB_NAMES, ("siteName",)))
        if code == SC_NO_JOBS:
            return None
        if code != SC_SUCCESS:
            raise status_error("getJob", code, reply)
        if "jobs" not in reply:  # one job: the reply is its definition (all strings when URL-encoded)
            return reply
        jobs = decode_value(reply["jobs"])  # asked for nJobs: a list (JSON text when URL-encoded)
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            raise ServerError("getJob: reply jobs is not a list of job objects")
        self._spare_jobs.extend(jobs[1:])
        return jobs[0] if jobs else None

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        body = legacy_params(fields, UPDATE_JOB_NAMES, ("jobId", "state"))
        what = f"updateJob of job {body['jobId']} ({body['state']})"
        if body["state"] not in VALID_JOB_STATES:  # the server would acknowledge it and drop it
            raise ServerError(f"{what}: invalid job state, expected one of {', '.join(VALID_JOB_STATES)}")
        reply, code = await self._call("updateJob", body, what)
        if code != SC_SUCCESS:
            raise status_error(what, code, reply)
        return UpdateReply(command=normalize_command(reply.get("command")), status_code=code, raw=reply)

    async def update_worker_status(self, worker_id: str, harvester_id: str, status: str,
                                   node_id: str | None = None) -> None:
        body = {"workerID": str(worker_id), "harvesterID": str(harvester_id), "status": status,
                **({"node_id": node_id} if node_id else {})}
        what = f"updateWorkerPilotStatus of worker {worker_id} ({status})"
        reply, code = await self._call("updateWorkerPilotStatus", body, what)
        if code != SC_SUCCESS:
            raise status_error(what, code, reply)

    # --- event ranges ---------------------------------------------------------------------
    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        fields = {"pandaID": job_id, "jobsetID": jobset_id, "taskID": task_id, "nRanges": n_ranges}
        body = {name: legacy_value(name, value) for name, value in fields.items() if value is not None}
        what = f"getEventRanges of job {job_id}"
        reply, code = await self._call("getEventRanges", body, what)
        if code != SC_SUCCESS:
            raise status_error(what, code, reply)
        return ranges_from_reply(what, reply.get("eventRanges"))

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        body = {"eventRanges": encode_updates(ranges), "version": legacy_value("version", version)}
        reply, code = await self._call("updateEventRanges", body)
        if code != SC_SUCCESS:
            raise status_error("updateEventRanges", code, reply)
        return update_reply("updateEventRanges", reply)

    # --- transport ------------------------------------------------------------------------
    async def _call(self, method: str, params: dict[str, Any], what: str = "") -> tuple[dict[str, Any], int]:
        what = what or method
        if self.json_body:  # the legacy server gunzips every JSON body
            payload = gzip.compress(json.dumps(params).encode())
            headers = {"Accept": JSON, "Content-Type": JSON, "Content-Encoding": "gzip"}
        else:
            payload = urlencode({k: str(v) for k, v in params.items()}).encode()
            headers = {"Accept": JSON, "Content-Type": FORM}
        reply = await self._http.post(f"{self.base_url}/server/panda/{method}", payload, headers, what)
        return parse_reply(what, reply.content)
