"""Harvester's side of the shared-file messenger, played for the tests as docs/hpc.md describes it.

- feeding a job: the inputs put in Harvester's own storage area and symlinked into the access point by LFN,
  then the job spec written (``{"<PandaID>": {job}}``, or the cgi form), the PandaID list beside it;
- each monitor cycle: ``worker_attributes.json`` read as is; ``event_status.dump.json`` and
  ``worker_updateevents.json`` taken with the ``.read`` rename and acknowledged (``.read.<timestamp>``);
  a job request answered by the next job (the request deleted); an event request answered with
  ``JobsEventRanges.json`` (the request deleted);
- every declared file checked: present, its size and its adler32 (8 lowercase hex digits).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

NODEPILOT = [sys.executable, "-m", "nodepilot"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TYPES = ("log", "output", "checkpoint", "es_output", "zip_output")


def adler32(path: Path) -> str:
    value = 1
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def job(panda_id: int, command: str, inputs: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A PanDA job dict as the server hands it out (and Harvester writes it)."""
    return {"PandaID": panda_id, "attemptNr": 1, "taskID": 70, "jobsetID": 7, "transformation": "bash",
            "jobPars": f"-c '{command}'", "inFiles": ",".join(inputs), "scopeIn": ",".join("demo" for _ in inputs),
            "outFiles": f"out{panda_id}.txt,log{panda_id}.tgz", "logFile": f"log{panda_id}.tgz",
            "scopeOut": "demo.out", "scopeLog": "demo.log", "maxWalltime": 600, **extra}


@dataclass
class Harvester:
    access_point: Path
    storage: Path
    queue: list[tuple[dict[str, Any], dict[str, bytes]]] = field(default_factory=list)  # jobs to refill with
    ranges: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # event ranges left, by PandaID
    attributes: list[dict[str, Any]] = field(default_factory=list)  # every worker_attributes.json seen
    declared: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # event_status.dump.json entries
    event_updates: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    handed_out: list[str] = field(default_factory=list)  # event range ids
    job_requests: int = 0
    fed_at: list[float] = field(default_factory=list)
    refill_delay_s: float = 0.0
    spec_format: str = "json"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last_attributes: float = 0.0

    def __post_init__(self) -> None:
        self.access_point.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)

    # --- feeding --------------------------------------------------------------------------
    def feed(self, definition: dict[str, Any], inputs: dict[str, bytes] | None = None) -> None:
        """Harvester's feed_jobs: input symlinks, the job spec, the PandaID list."""
        definition = dict(definition)
        guids, sizes, sums = [], [], []
        for lfn, data in (inputs or {}).items():
            stored = self.storage / lfn
            stored.write_bytes(data)
            link = self.access_point / lfn
            link.unlink(missing_ok=True)
            os.symlink(stored, link)
            guids.append(f"guid-{lfn}")
            sizes.append(str(len(data)))
            sums.append(f"ad:{adler32(stored)}")
        if inputs:
            definition.update(GUID=",".join(guids), fsize=",".join(sizes), checksum=",".join(sums))
        panda_id = int(definition["PandaID"])
        text = (urlencode({k: str(v) for k, v in definition.items()}) if self.spec_format == "cgi"
                else json.dumps({str(panda_id): definition}))
        self.write_spec(text)
        (self.access_point / "worker_pandaids.json").write_text(json.dumps([panda_id]))
        self.fed_at.append(time.monotonic())

    def write_spec(self, text: str, name: str = "HPCJobs.json") -> None:
        tmp = self.access_point / f".{name}.new"
        tmp.write_text(text)
        os.replace(tmp, self.access_point / name)

    # --- Harvester's monitor --------------------------------------------------------------
    def cycle(self) -> None:
        self._read_attributes()
        for name, into in (("event_status.dump.json", self.declared), ("worker_updateevents.json",
                                                                     self.event_updates)):
            for panda_id, entries in self._take(name).items():
                into.setdefault(int(panda_id), []).extend(entries)
        request = self.access_point / "worker_requestjob.json"
        if request.exists():
            n_jobs = json.loads(request.read_text()).get("nJobs", 1)
            assert n_jobs == 1, n_jobs
            self.job_requests += 1
            request.unlink()  # as feed_jobs does
            if self.queue:
                time.sleep(self.refill_delay_s)
                self.feed(*self.queue.pop(0))
        self._answer_event_request()

    def _read_attributes(self) -> None:
        path = self.access_point / "worker_attributes.json"
        try:
            stamp = path.stat().st_mtime_ns
            if stamp == self._last_attributes:
                return
            read = json.loads(path.read_text())
        except FileNotFoundError:
            return
        self._last_attributes = stamp
        assert isinstance(read, dict) and "jobStatus" in read, read  # flat, never half a file
        if not self.attributes or self.attributes[-1] != read:
            self.attributes.append(read)

    def _take(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """Harvester's get_files_to_stage_out / events_to_update: rename to .read, parse, acknowledge."""
        path = self.access_point / name
        read = path.with_name(name + ".read")
        try:
            os.rename(path, read)
        except FileNotFoundError:
            return {}
        doc = json.loads(read.read_text())  # a half-written file fails the test here
        assert isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()), doc
        os.rename(read, read.with_name(f"{read.name}.{time.strftime('%Y%m%d%H%M%S')}{time.monotonic_ns()}"))
        return doc

    def _answer_event_request(self) -> None:
        request = self.access_point / "worker_requestevents.json"
        ranges_file = self.access_point / "JobsEventRanges.json"
        if not request.exists() or ranges_file.exists():
            return
        doc = json.loads(request.read_text())
        answer: dict[str, list[dict[str, Any]]] = {}
        for key, ask in doc.items():
            left = self.ranges.get(int(key), [])
            given, self.ranges[int(key)] = left[:int(ask["nRanges"])], left[int(ask["nRanges"]):]
            answer[key] = given
            self.handed_out.extend(r["eventRangeID"] for r in given)
        tmp = ranges_file.with_name(".JobsEventRanges.json.new")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, ranges_file)
        request.unlink()

    # --- running alongside a pilot -----------------------------------------------------------
    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.cycle()
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.cycle()  # what the pilot left at its end

    # --- checks -----------------------------------------------------------------------------
    def check_declared(self, panda_id: int) -> dict[str, list[dict[str, Any]]]:
        """Every entry valid as Harvester's parser takes it, its file present with that size and adler32."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        for entry in self.declared.get(panda_id, []):
            assert entry.get("type") in TYPES, entry
            path = Path(entry["path"])
            assert path.is_absolute() and path.is_file(), entry
            assert entry["fsize"] == path.stat().st_size, entry
            assert re.fullmatch(r"[0-9a-f]{8}", entry["chksum"]) and entry["chksum"] == adler32(path), entry
            assert entry.get("guid"), entry
            if entry["type"] in ("es_output", "zip_output"):
                assert entry.get("eventStatus") and entry.get("eventRangeID"), entry
            by_type.setdefault(entry["type"], []).append(entry)
        return by_type

    def final_attributes(self, panda_id: int) -> dict[str, Any]:
        finals = [a for a in self.attributes if a.get("jobId") == panda_id and a["jobStatus"] in ("finished", "failed")]
        assert finals, f"no final worker attributes for {panda_id}: {self.attributes}"
        return finals[-1]


def start_pilot(ap: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The pilot as Harvester's batch job starts it: in the access point, with the reference pilot's options."""
    return subprocess.Popen([*NODEPILOT, "start", "-q", "HPC_QUEUE", "-z", "--harvester-workdir", str(ap), *extra],
                            cwd=ap, env={**os.environ, "NODEPILOT_ISOLATION_BINDS": str(EXAMPLES), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the pilot did not end within {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, err
