"""A stager request (docs/bus.md, ``stager:requests``) parsed into typed objects, and the per-file result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.errors import ErrorCode
from nodepilot.job import FileSpec, JobDefinitionError, check_lfn, parse_checksum
from nodepilot.queue.model import Endpoint
from nodepilot.requests import BadRequest, endpoints_of, request_id_of, workdir_of

KINDS = ("stagein", "stageout", "stagelog")
DEFAULT_ACTIVITY = {"stagein": "read_lan", "stageout": "write_lan", "stagelog": "pl"}
ALT_STAGEOUT_VALUES = ("", "on", "off", "force")


@dataclass
class Request:
    kind: str
    job_id: int
    request_id: str
    workdir: Path
    endpoints: list[Endpoint]
    files: list[FileSpec]
    tarball_dir: str = ""
    exclude: list[str] = field(default_factory=list)
    activity: str = ""
    alt_stageout: str = ""  # the job's altStageOut: on | off | force | "" (the queue decides)
    direct_access: bool = False  # the job lets its inputs be read in place
    task_id: int | None = None

    @property
    def direction(self) -> str:
        return "in" if self.kind == "stagein" else "out"


@dataclass
class FileResult:
    lfn: str
    status: str = "failed"  # done | failed | direct (stage-in only: not copied, read in place at turl)
    error_code: int = 0
    diag: str = ""
    fsize: int | None = None
    checksum: str = ""
    guid: str = ""
    surl: str = ""
    endpoint: str = ""
    seconds: float = 0.0
    attempts: int = 0
    turl: str = ""  # direct access: the URL the payload opens
    log_se_surl: str = ""  # stagelog: the copy on the secondary log SE, when there is one


def failed_files(lfns: list[str], diag: str, code: int = ErrorCode.PILOT_EXCEPTION) -> list[FileResult]:
    return [FileResult(lfn, error_code=int(code), diag=diag) for lfn in lfns]


def lfns_of(m: dict[str, Any]) -> list[str]:
    """The file names a request mentions, however broken it is (to report each as failed)."""
    entries = [m.get("log")] if m.get("kind") == "stagelog" else m.get("files")
    if not isinstance(entries, list):
        return []
    return [e["lfn"] for e in entries if isinstance(e, dict) and isinstance(e.get("lfn"), str)]


def parse_request(kind: str, job_id: int, m: dict[str, Any]) -> Request:
    """A typed request, or BadRequest saying what is wrong with it."""
    request_id, workdir = request_id_of(m), workdir_of(m)
    if not isinstance(m.get("endpoints"), list):  # the stager needs them given, even if empty
        raise BadRequest(f"endpoints must be a list of {{name, url}}, got {m.get('endpoints')!r:.200}")
    request = Request(kind, job_id, request_id, workdir, endpoints_of(m), [])
    request.activity = _text(m, "activity") or DEFAULT_ACTIVITY[kind]
    request.alt_stageout = _text(m, "alt_stageout").lower()
    if request.alt_stageout not in ALT_STAGEOUT_VALUES:
        raise BadRequest(f"alt_stageout must be one of on, off, force, got {request.alt_stageout!r:.50}")
    direct = m.get("direct_access", False)
    if not isinstance(direct, bool):
        raise BadRequest(f"direct_access must be true or false, got {direct!r:.50}")
    request.direct_access = direct
    task_id = m.get("task_id")
    request.task_id = task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
    if kind == "stagelog":
        request.files = [_file(m.get("log"), "log")]
        request.tarball_dir = _safe_name(m.get("tarball_dir"), "tarball_dir")
        exclude = m.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            raise BadRequest("exclude must be a list of file names")
        request.exclude = exclude
    else:
        files = m.get("files")
        if not isinstance(files, list):
            raise BadRequest("no files list")
        request.files = [_file(f, "input" if kind == "stagein" else "output") for f in files]
    lfns = [f.lfn for f in request.files]
    if len(set(lfns)) != len(lfns):
        raise BadRequest("the same lfn appears twice")
    return request


def _text(m: dict[str, Any], key: str) -> str:
    value = m.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, got {value!r:.50}")
    return value.strip()


def _safe_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} missing or not a string")
    try:
        return check_lfn(value)
    except JobDefinitionError as exc:
        raise BadRequest(f"{what}: {exc.diag}") from None


def _file(d: Any, role: str) -> FileSpec:
    if not isinstance(d, dict):
        raise BadRequest(f"{role} file entry is not an object: {d!r:.100}")
    lfn = _safe_name(d.get("lfn"), f"{role} lfn")
    scope = d.get("scope")
    if not isinstance(scope, str) or not scope:
        raise BadRequest(f"{role} file {lfn} has no scope")
    spec = FileSpec(lfn=lfn, scope=scope, guid=str(d.get("guid") or ""),
                    ddm_endpoint=str(d.get("ddm_endpoint") or ""), dataset=str(d.get("dataset") or ""))
    if role == "input":
        fsize = d.get("fsize")
        if isinstance(fsize, str) and fsize.isdigit():
            fsize = int(fsize)
        if fsize is not None and (isinstance(fsize, bool) or not isinstance(fsize, int) or fsize < 0):
            raise BadRequest(f"input file {lfn}: fsize {fsize!r} is not a size")
        spec.fsize = fsize
        checksum = d.get("checksum")
        if checksum is not None and not isinstance(checksum, str):
            raise BadRequest(f"input file {lfn}: checksum {checksum!r} is not a string")
        try:
            spec.checksum = parse_checksum(checksum) if checksum else None
        except JobDefinitionError as exc:
            raise BadRequest(f"input file {lfn}: {exc.diag}") from None
        spec.dispatch_token = str(d.get("dispatch_token") or "")  # "local": always copied, never read in place
    return spec
