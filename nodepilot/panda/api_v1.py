"""The new PanDA API (``<server>/api/v1/pilot/...``, PANDA_PROTOCOL.md sections 1-3).

The server checks every parameter against its handler's signature and rejects the whole call
for an unknown name or a JSON value of the wrong type, so each field is converted to the type
the handler declares and anything it does not declare is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from nodepilot.panda.client import ServerClient, ServerError, UpdateReply, normalize_command

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 50 * 1024 * 1024
MAX_BACKOFF_S = 60.0
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


def _snippet(content: bytes, limit: int = 200) -> str:
    text = content[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split()) + ("..." if len(content) > limit else "")


def _status_code(method: str, data: dict[str, Any]) -> int:
    try:
        return int(data.get("StatusCode", 0))
    except (TypeError, ValueError):
        raise ServerError(f"{method}: StatusCode {data.get('StatusCode')!r} is not a number",
                          retryable=True) from None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The server-verifying TLS context: built once (loading CAs takes ~80 ms), before the
    launcher forks, so no service pays for it on a job's critical path. Plain http needs none."""
    cafile = os.environ.get("X509_CERT_FILE")
    capath = os.environ.get("X509_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return httpx.create_ssl_context()


class ApiV1Client(ServerClient):
    def __init__(self, base_url: str, timeout: float = 120, retries: int = 3,
                 transport: httpx.AsyncBaseTransport | None = None, backoff_s: float = 1.0) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/api/v1")
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False,
                                       verify=tls_context() if base_url.startswith("https") else False)
        self._spare_jobs: deque[dict[str, Any]] = deque()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- calls ----------------------------------------------------------------------------
    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if self._spare_jobs:
            return self._spare_jobs.popleft()
        body = translate({"n_jobs": 1, **params}, ACQUIRE_MAP, required=("site_name",))
        reply = await self._call("acquire_jobs", body)
        if not reply["success"]:
            message = str(reply.get("message") or "")
            if message.strip().lower() == NO_JOBS_MESSAGE.lower():
                return None
            raise ServerError(f"acquire_jobs refused: {message}",
                              retryable=message.lower().startswith("timed out"))
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
        reply = await self._call("update_job", body)
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

    # --- transport ------------------------------------------------------------------------
    async def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with bounded retries on connection trouble, time-outs, 5xx and 429; decode the reply."""
        url = f"{self.base_url}/api/v1/pilot/{method}"
        payload = json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            retry_after = 0.0
            try:
                async with asyncio.timeout(self.timeout):
                    status, content, retry_header = await self._post(url, payload, headers)
            except (httpx.TransportError, TimeoutError) as exc:
                if isinstance(exc, httpx.UnsupportedProtocol):
                    raise ServerError(f"{method}: {exc}") from exc
                error = ServerError(f"{method}: {type(exc).__name__}: {str(exc) or 'timed out'}", retryable=True)
            except httpx.HTTPError as exc:  # undecodable content, too many redirects
                raise ServerError(f"{method}: {type(exc).__name__}: {exc}", retryable=True) from exc
            else:
                if 200 <= status < 300:
                    return self._decode(method, content)
                error = ServerError(f"{method}: HTTP {status}: {_snippet(content)}",
                                    retryable=status >= 500 or status == 429)
                if not error.retryable:
                    raise error
                retry_after = float(retry_header) if retry_header.isdigit() else 0.0
            if attempt == self.retries:
                raise error
            delay = min(MAX_BACKOFF_S, max(self.backoff_s * 2**attempt * (0.5 + random.random()), retry_after))
            log.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt + 1, self.retries + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        async with self._http.stream("POST", url, content=payload, headers=headers) as resp:
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_REPLY_BYTES:
                raise ServerError(f"reply of {length} bytes is larger than {MAX_REPLY_BYTES} bytes")
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise ServerError(f"reply larger than {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
            return resp.status_code, b"".join(chunks), resp.headers.get("retry-after", "").strip()

    @staticmethod
    def _decode(method: str, content: bytes) -> dict[str, Any]:
        # the real server labels its JSON text/plain: the content type proves nothing either way
        try:
            reply = json.loads(content)
        except ValueError:
            raise ServerError(f"{method}: reply is not JSON (without Accept: application/json the server "
                              f"answers in text): {_snippet(content)!r}", retryable=True) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("success"), bool):
            raise ServerError(f"{method}: reply is not {{success, message, data}}: {_snippet(content)!r}",
                              retryable=True)
        return reply
