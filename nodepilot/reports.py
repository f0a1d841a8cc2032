"""The payload's reports, read the same way by the runner and by the experiment plug-ins.

Sources (docs/protocol.md, "The payload's report"): ``jobReport.json`` (exitCode, exitMsg,
exeErrorCode, exeErrorDiag, resource.transform.processedEvents, files.output[].subFiles[]) and the
simpler ``payload_error_report.json`` ({error_code, error_diag}). A report that is missing, too big
or malformed never fails the reading: it is noted in the pilot diag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.values import whole_number

JOB_REPORT = "jobReport.json"
ERROR_REPORT = "payload_error_report.json"
STDOUT = "payload.stdout"
STDERR = "payload.stderr"
MAX_REPORT_BYTES = 10 * 1024 * 1024
SETUP_FAILED_MARK = ".nodepilot_setup_failed"  # left in the work dir when a setup step failed (runner: 1110)


@dataclass
class Reports:
    """What the payload's reports say (None / empty: not said)."""

    text: str = ""  # jobReport.json as written ("" if none or unreadable)
    exit_code: int | None = None  # jobReport exitCode
    exit_msg: str = ""
    exe_error_code: int | None = None  # top-level exeErrorCode
    exe_error_diag: str = ""
    error_code: int | None = None  # payload_error_report.json
    error_diag: str = ""
    n_events: int = 0
    output_guids: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was wrong with the reports

    @property
    def diag(self) -> str:
        msg = self.exit_msg if self.exit_msg.strip().upper() != "OK" else ""
        return msg or self.exe_error_diag or self.error_diag


def read_limited(path: Path, limit: int = MAX_REPORT_BYTES) -> tuple[str | None, str]:
    """(text, note): text None when the file is absent, unreadable or bigger than ``limit``."""
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path.name} unreadable: {exc.strerror or exc}"
    if len(data) > limit:
        return None, f"{path.name} is bigger than {limit // (1024 * 1024)} MB: ignored"
    return data.decode("utf-8", errors="replace"), ""


def _load(path: Path) -> tuple[str | None, dict[str, Any] | None, str]:
    text, note = read_limited(path)
    if text is None:
        return None, None, note
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        return text, None, f"{path.name} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return text, None, f"{path.name} is not a JSON object"
    return text, data, ""


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _guids(data: dict[str, Any]) -> dict[str, str]:
    guids: dict[str, str] = {}
    outputs = _dig(data, "files", "output")
    for output in outputs if isinstance(outputs, list) else []:
        subs = output.get("subFiles") if isinstance(output, dict) else None
        for sub in subs if isinstance(subs, list) else []:
            if isinstance(sub, dict) and _str(sub.get("name")) and _str(sub.get("file_guid")):
                guids[sub["name"]] = sub["file_guid"]
    return guids


def read_reports(workdir: Path) -> Reports:
    reports = Reports()
    text, data, note = _load(workdir / JOB_REPORT)
    reports.text = text or ""
    if note:
        reports.notes.append(note)
    if data is not None:
        reports.exit_code = whole_number(data.get("exitCode"))
        reports.exit_msg = _str(data.get("exitMsg"))
        reports.exe_error_code = whole_number(data.get("exeErrorCode"))
        reports.exe_error_diag = _str(data.get("exeErrorDiag"))
        reports.n_events = max(whole_number(_dig(data, "resource", "transform", "processedEvents")) or 0, 0)
        reports.output_guids = _guids(data)
    _text, data, note = _load(workdir / ERROR_REPORT)
    if note:
        reports.notes.append(note)
    if data is not None:
        reports.error_code = whole_number(data.get("error_code"))
        reports.error_diag = _str(data.get("error_diag"))
    return reports
