"""What the monitor sends the eventclient (a start request) and what ``es_done`` carries
(README.md, "Requests")."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.errors import clip_diag
from nodepilot.requests import BadRequest, endpoints_of, request_id_of, workdir_of

DEFAULT_BATCH = 10
DEFAULT_REPORT_BATCH = 10
DEFAULT_REPORT_INTERVAL_S = 30.0
DEFAULT_FINISH_TIMEOUT_S = 300.0
DEFAULT_ZIP_SECONDS = 60.0


@dataclass
class StartRequest:
    job_id: int
    request_id: str
    workdir: Path
    jobset_id: int = 0
    task_id: int | None = None
    batch: int = DEFAULT_BATCH
    endpoints: list[dict[str, str]] = field(default_factory=list)
    scope_out: str = ""
    ranges_file: str | None = None
    report_file: str | None = None
    report_batch: int = DEFAULT_REPORT_BATCH
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S
    finish_timeout_s: float = DEFAULT_FINISH_TIMEOUT_S
    zip_outputs: int = 0  # 0: each output staged on its own; K: zips of up to K outputs
    zip_seconds: float = DEFAULT_ZIP_SECONDS  # a zip goes out this long after its first output, even if short
    objstore_id: int | None = None  # the es_events endpoint's numeric id, named in every range report
    shared: bool = False  # a share of a jumbo job: ranges of the job this eventclient does not hold are others'

    @classmethod
    def parse(cls, job_id: int, m: dict[str, Any]) -> StartRequest:
        request_id, workdir, endpoints = request_id_of(m), workdir_of(m), endpoints_of(m)
        scope = m.get("scope_out")
        if not isinstance(scope, str) or not scope:
            raise BadRequest("no scope_out for the range outputs")
        try:
            return cls(
                job_id=job_id, request_id=request_id, workdir=workdir,
                jobset_id=int(m.get("jobset_id") or 0),
                task_id=None if m.get("task_id") in (None, "") else int(m["task_id"]),
                batch=max(1, int(m.get("batch") or DEFAULT_BATCH)),
                endpoints=[{"name": e.name, "url": e.url} for e in endpoints], scope_out=scope,
                ranges_file=_optional_path(m.get("ranges_file")), report_file=_optional_path(m.get("report_file")),
                report_batch=max(1, int(m.get("report_batch") or DEFAULT_REPORT_BATCH)),
                report_interval_s=max(0.0, float(m.get("report_interval_s") or DEFAULT_REPORT_INTERVAL_S)),
                finish_timeout_s=max(0.0, float(m.get("finish_timeout_s") or DEFAULT_FINISH_TIMEOUT_S)),
                zip_outputs=max(0, int(m.get("zip_outputs") or 0)),
                zip_seconds=max(0.0, float(m.get("zip_seconds") or DEFAULT_ZIP_SECONDS)),
                objstore_id=None if m.get("objstore_id") in (None, "") else int(m["objstore_id"]),
                shared=m.get("shared") is True,
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"malformed number: {exc}") from None

    def to_message(self) -> dict[str, Any]:
        return {**asdict(self), "workdir": str(self.workdir), "action": "start"}


def _optional_path(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise BadRequest(f"expected an absolute path, got {value!r}")
    return value


def summary(n_ranges: int = 0, finished: int = 0, failed: int = 0, n_events: int = 0, error_code: int = 0,
            diag: str = "", files: list[dict[str, Any]] | None = None, unreported: int = 0) -> dict[str, Any]:
    """The body of ``es_done``."""
    return {"n_ranges": n_ranges, "finished": finished, "failed": failed, "n_events": n_events,
            "error_code": int(error_code), "diag": clip_diag(diag), "files": files or [], "unreported": unreported}
