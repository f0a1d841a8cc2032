"""Harvester push mode: "the server" is Harvester's shared-file messenger in the worker's access point
(docs/hpc.md). No network call is ever made: jobs are read from the job spec file Harvester writes, every
report is a file written whole for Harvester to read, and Harvester does every PanDA call and transfer.

The monitor and the event client each make their own client (one per process). Only the one that asks
for jobs (the monitor's) owns the worker: it keeps the heartbeat file fresh and leaves the kill file
when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.panda.client import ServerClient, UpdateReply
from nodepilot.panda.errors import ServerError
from nodepilot.panda.events import flatten_updates
from nodepilot.panda.harvester_files import (
    HarvesterFiles,
    JobSpecError,
    append_entries,
    merge_into,
    parse_job_spec,
    read_json,
    touch,
    write_whole,
)
from nodepilot.panda.harvester_wait import wait_for_file
from nodepilot.timeutil import panda_time

log = logging.getLogger(__name__)

FINAL = ("finished", "failed", "holding")
NOT_ATTRIBUTES = ("xml", "outputfiles", "inputfiles")  # Harvester learns about files from the status dump


class HarvesterClient(ServerClient):
    def __init__(self, files: HarvesterFiles, wait_s: float = 600.0, heartbeat_s: float = 0.0) -> None:
        self.files = files
        self.wait_s = wait_s  # how long a later job (or event ranges) may take to come
        self.heartbeat_s = heartbeat_s  # the worker heartbeat file's refresh period (0: not asked for)
        self.jobs: dict[int, dict[str, Any]] = {}  # the definitions handed out, by PandaID
        self._owner = False
        self._range_jobs: dict[str, int] = {}  # event range id -> the PandaID it was handed out for
        self._heartbeat: asyncio.Task[None] | None = None

    # --- jobs ------------------------------------------------------------------------------
    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self._acquire_job()
        except OSError as exc:  # the access point gone or unreadable: no job can come
            raise ServerError(f"Harvester's access point {self.files.access_point}: {exc}") from exc

    async def _acquire_job(self) -> dict[str, Any] | None:
        if not self._owner:
            self._owner = True
            if self.heartbeat_s > 0:
                self._heartbeat = asyncio.create_task(self._keep_alive())
        ap = self.files.access_point
        if self.jobs:  # a later job: asked for, then awaited (Harvester refills the worker)
            request = self.files.path(self.files.job_request)
            if not request.exists():
                await asyncio.to_thread(write_whole, request, {"nJobs": 1})
            log.info("asked Harvester for another job (%s); waiting up to %.0f s", request.name, self.wait_s)
        found = await wait_for_file(ap, self.files.job_specs, self.wait_s)  # the first too: a shared file
        # system may show it late
        if found is None:
            log.info("no job spec file in %s", ap)
            return None
        return await asyncio.to_thread(self._take_job, found)

    def _take_job(self, spec: Path) -> dict[str, Any]:
        """The job spec moved aside (read once), the job request withdrawn, the definition returned as written:
        a definition the pilot cannot run is failed by the pilot (parse_job), like a server's."""
        taken = spec.with_name(spec.name + self.files.consumed_suffix)
        os.replace(spec, taken)
        self.files.path(self.files.job_request).unlink(missing_ok=True)
        try:
            panda_id, job = parse_job_spec(taken.read_text(errors="replace"))
        except JobSpecError as exc:
            diag = clip_diag(f"broken job definition in {spec.name}: {exc}")
            self._write_attributes({"jobId": exc.panda_id, "state": "failed", "pilotErrorCode":
                                    ErrorCode.BAD_JOB_DEFINITION, "pilotErrorDiag": diag})
            raise ServerError(diag, code=ErrorCode.BAD_JOB_DEFINITION) from None
        if panda_id is not None:
            self.jobs[panda_id] = job
        log.info("job %s taken from %s", panda_id, spec.name)
        return job

    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        try:
            await asyncio.to_thread(self._update, fields)
        except OSError as exc:
            raise ServerError(f"cannot write to the access point {self.files.access_point}: {exc}",
                              retryable=True) from exc
        return UpdateReply(command=None, status_code=0, raw={})

    def _update(self, fields: dict[str, Any]) -> None:
        """At the end: the files to stage out and the job report first, then the final status (Harvester
        acts on a final status: what goes with it is there by then)."""
        if fields.get("state") in FINAL:
            job_id = int(fields["jobId"])
            append_entries(self.files.path(self.files.event_status), job_id, self._declared(job_id, fields))
            write_whole(self.files.path(self.files.job_report), _report(fields.get("metaData")))
        self._write_attributes(fields)

    def _write_attributes(self, fields: dict[str, Any]) -> None:
        attributes = {k: v for k, v in fields.items() if k not in NOT_ATTRIBUTES and v is not None}
        attributes.update(jobStatus=fields.get("state"), timestamp=panda_time(time.time()))
        write_whole(self.files.path(self.files.worker_attributes), attributes)

    def _declared(self, job_id: int, fields: dict[str, Any]) -> list[dict[str, Any]]:
        """The log and the outputs stored in the access point, as Harvester's stager takes them."""
        try:
            report = json.loads(fields.get("xml") or "{}")
        except ValueError:
            report = {}
        log_lfn = str(self.jobs.get(job_id, {}).get("logFile") or "")
        entries = []
        for lfn, f in report.items() if isinstance(report, dict) else ():
            entries.append({"type": "log" if lfn == log_lfn else "output", "path": _path_of(f.get("surl"), lfn,
                            self.files.access_point), "fsize": f.get("fsize"), "guid": f.get("guid"),
                            "chksum": f.get("adler32")})
        return entries

    # --- event ranges ---------------------------------------------------------------------
    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        try:
            return await self._acquire_ranges(job_id, jobset_id, task_id, n_ranges)
        except OSError as exc:
            raise ServerError(f"event ranges through {self.files.access_point}: {exc}", retryable=True) from exc

    async def _acquire_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                              n_ranges: int) -> list[dict[str, Any]]:
        ranges_file = self.files.path(self.files.event_ranges)
        request = {"pandaID": job_id, "taskID": task_id, "jobsetID": jobset_id, "nRanges": n_ranges}
        await asyncio.to_thread(merge_into, self.files.path(self.files.event_request),
                                lambda pending: {**pending, str(job_id): request})
        found = await wait_for_file(ranges_file.parent, (ranges_file.name,), self.wait_s)
        if found is None:
            log.warning("job %s: no event ranges from Harvester within %.0f s", job_id, self.wait_s)
            return []
        read = found.with_name(found.name + ".read")
        os.replace(found, read)
        try:
            doc = read_json(read)
        except ValueError as exc:
            raise ServerError(f"{ranges_file.name} is not valid JSON: {exc}") from None
        ranges = doc.get(str(job_id), []) if isinstance(doc, dict) else None
        if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges):
            raise ServerError(f"{ranges_file.name}: the ranges of job {job_id} are not a list of objects")
        self._range_jobs.update((str(r.get("eventRangeID")), job_id) for r in ranges)
        return ranges

    def _job_of(self, update: dict[str, Any]) -> int:
        """The PandaID a range was handed out for (Harvester's files are keyed by it)."""
        rid = str(update.get("eventRangeID"))
        if rid in self._range_jobs:
            return self._range_jobs[rid]
        return next(iter(self._range_jobs.values()), 0)

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        """A range with its output stored goes to the status dump (Harvester stages the file, then reports the
        range); any other range to the event updates file: each range in exactly one of the two."""
        by_job_dump: dict[int, list[dict[str, Any]]] = {}
        by_job_events: dict[int, list[dict[str, Any]]] = {}
        for item in ranges:
            zip_file = item.get("zipFile") if version >= 1 and isinstance(item, dict) else None
            members = flatten_updates([item], version)
            if isinstance(zip_file, dict) and zip_file.get("lfn"):
                zipped = len(members) > 1
                for r in members:
                    by_job_dump.setdefault(self._job_of(r), []).append(_dump_entry(r, zip_file, zipped, self.files))
            else:
                for r in members:
                    by_job_events.setdefault(self._job_of(r), []).append(
                        {k: r[k] for k in ("eventRangeID", "eventStatus", "coreCount", "cpuConsumptionTime",
                                           "loss") if k in r})
        try:
            for job_id, entries in by_job_dump.items():
                await asyncio.to_thread(append_entries, self.files.path(self.files.event_status), job_id, entries)
            for job_id, entries in by_job_events.items():
                await asyncio.to_thread(append_entries, self.files.path(self.files.update_events), job_id, entries)
        except OSError as exc:
            raise ServerError(f"cannot report event ranges in {self.files.access_point}: {exc}",
                              retryable=True) from exc
        return {"Returns": [True] * len(flatten_updates(ranges, version)), "Commands": None}

    # --- the worker -------------------------------------------------------------------------
    async def _keep_alive(self) -> None:
        while True:
            try:
                await asyncio.to_thread(touch, self.files.path(self.files.heartbeat))
            except OSError as exc:  # said, and tried again: the worker is alive, its file system hiccupped
                log.warning("cannot refresh %s: %s", self.files.heartbeat, exc)
            await asyncio.sleep(self.heartbeat_s)  # a timer: the file's age is what Harvester checks

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._owner:  # the worker is done: Harvester may clean it up
            with contextlib.suppress(OSError):
                await asyncio.to_thread(touch, self.files.path(self.files.kill_worker))


def _report(meta_data: Any) -> dict[str, Any]:
    """The payload's job report (or the pilot's own minimal one), as a JSON object."""
    if isinstance(meta_data, dict):
        return meta_data
    try:
        read = json.loads(meta_data or "{}")
    except ValueError:
        return {"exitMsg": str(meta_data)[:2000]}
    return read if isinstance(read, dict) else {"report": read}


def _path_of(surl: Any, lfn: str, access_point: Path) -> str:
    if isinstance(surl, str) and surl.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(surl).path)
    return str(access_point / lfn)


def _dump_entry(update: dict[str, Any], zip_file: dict[str, Any], zipped: bool,
                files: HarvesterFiles) -> dict[str, Any]:
    checksum = str(zip_file.get("adler32") or "")
    path = str(files.access_point / str(zip_file["lfn"]))
    # a range report names no GUID: one of the file's own (every range of a zip gets the same)
    guid = zip_file.get("guid") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{path}#{checksum}"))
    return {"type": "zip_output" if zipped else "es_output", "eventRangeID": update.get("eventRangeID"),
            "eventStatus": update.get("eventStatus", "finished"),
            "path": path, "fsize": zip_file.get("fsize"), "chksum": checksum.split(":", 1)[-1], "guid": guid,
            **({"isZip": 1} if zipped else {})}
