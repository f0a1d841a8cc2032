"""PanDA job definitions parsed into typed objects (docs/protocol.md section 2).

Replies carry numbers as JSON numbers (new API) or strings (legacy, URL-encoded): both are
accepted. File lists are comma-separated strings aligned by index. Anything the pilot
cannot run as given raises ``JobDefinitionError`` carrying the job's identity, so the job
can be failed cleanly at the server while the pilot goes on.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from nodepilot.errors import ErrorCode, PilotError
from nodepilot.values import flag, whole_number

NULLS = ("", "NULL", "None", "null")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_CHECKSUM_TYPES = {"ad": ("adler32", 8), "adler32": ("adler32", 8), "md5": ("md5", 32)}


class JobDefinitionError(PilotError):
    def __init__(self, diag: str, panda_id: int | None = None, attempt_nr: int = 0) -> None:
        super().__init__(ErrorCode.BAD_JOB_DEFINITION, f"broken job definition: {diag}")
        self.panda_id = panda_id
        self.attempt_nr = attempt_nr


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # adler32 | md5
    value: str  # lower-case hex

    def __str__(self) -> str:
        return f"{'ad' if self.algorithm == 'adler32' else 'md5'}:{self.value}"


@dataclass
class FileSpec:
    lfn: str
    scope: str = ""
    guid: str = ""
    fsize: int | None = None
    checksum: Checksum | None = None
    ddm_endpoint: str = ""
    dataset: str = ""
    dispatch_token: str = ""  # prodDBlockToken for inputs ("local": no direct access)
    destination_dblock: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "lfn": self.lfn, "scope": self.scope, "guid": self.guid, "fsize": self.fsize,
            "checksum": str(self.checksum) if self.checksum else None,
            "ddm_endpoint": self.ddm_endpoint, "dataset": self.dataset,
            **({"dispatch_token": self.dispatch_token} if self.dispatch_token else {}),
        }


@dataclass
class Job:
    panda_id: int
    attempt_nr: int = 0
    job_name: str = ""
    job_definition_id: int | None = None
    jobset_id: int | None = None
    task_id: int | None = None
    prod_source_label: str = ""
    processing_type: str = ""
    transformation: str = ""
    job_pars: str = ""
    sw_release: str = ""
    homepackage: str = ""
    cmtconfig: str = ""
    container_name: str = ""
    inputs: list[FileSpec] = field(default_factory=list)
    outputs: list[FileSpec] = field(default_factory=list)
    log: FileSpec | None = None
    max_cpu_count: int | None = None
    max_walltime: int | None = None
    max_disk_count: int | None = None
    min_ram_count: int | None = None
    core_count: int = 1
    resource_type: str = ""
    event_service: bool = False
    looping_check: bool = True
    alt_stage_out: str = ""
    debug: bool = False
    transfer_type: str = ""
    allow_no_output: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def work_dir_name(self) -> str:
        return f"PanDA_Pilot-{self.panda_id}"


# --- field readers ------------------------------------------------------------------

def _text(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if value is None:
        return ""
    value = str(value).strip()
    return "" if value in NULLS else value


def _int(d: dict[str, Any], key: str, ident: tuple[int | None, int]) -> int | None:
    value = d.get(key)
    if value is None or isinstance(value, bool) or _text(d, key) == "":
        return None
    number = whole_number(value)
    if number is None:
        raise JobDefinitionError(f"{key}={value!r} is not a number", *ident)
    return number


def _flag(d: dict[str, Any], key: str, default: bool) -> bool:
    return flag(d.get(key), default)


def _list(d: dict[str, Any], key: str) -> list[str]:
    value = d.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        items = ["" if v is None else str(v).strip() for v in value]
    else:
        text = str(value).strip()
        if text in NULLS:
            return []
        items = [item.strip() for item in text.split(",")]
    return ["" if item in NULLS else item for item in items]


def _aligned(d: dict[str, Any], key: str, n: int, ident: tuple[int | None, int],
             allow_single: bool = False) -> list[str]:
    items = _list(d, key)
    if not items:
        return [""] * n
    if len(items) == n:
        return items
    if allow_single and len(items) == 1:
        return items * n
    raise JobDefinitionError(f"{key} has {len(items)} entries for {n} files", *ident)


def check_lfn(lfn: str, ident: tuple[int | None, int] = (None, 0)) -> str:
    if (not lfn or "/" in lfn or "\\" in lfn or lfn in (".", "..") or ".." in lfn
            or any(ord(c) < 32 for c in lfn) or len(lfn) > 255):
        raise JobDefinitionError(f"unsafe file name {lfn!r}", *ident)
    return lfn


def parse_checksum(text: str, ident: tuple[int | None, int] = (None, 0)) -> Checksum | None:
    text = text.strip()
    if text in NULLS:
        return None
    kind, sep, value = text.partition(":")
    if not sep:  # a bare 8-digit hex value is an adler32 (as older servers send it)
        kind, value = "ad", text
    algo = _CHECKSUM_TYPES.get(kind.lower())
    if algo is None:
        raise JobDefinitionError(f"unknown checksum type {kind!r}", *ident)
    name, width = algo
    value = value.strip().lower()
    if not _HEX.match(value) or len(value) > width:
        raise JobDefinitionError(f"malformed {name} checksum {text!r}", *ident)
    return Checksum(name, value.zfill(width))


BASE64_PREFIX = "base64:"


def job_pars(d: dict[str, Any], ident: tuple[Any, ...]) -> str:
    """The payload's arguments. The server base64-encodes some without saying so: those pass on
    unchanged (the payload decodes them). Decoded here only when marked: a ``base64:`` prefix or
    ``jobParsEncoding: base64``; a marked value that does not decode is a broken definition."""
    text = str(d.get("jobPars") or "")
    marked = text.startswith(BASE64_PREFIX)
    if not marked and str(d.get("jobParsEncoding") or "").lower() != "base64":
        return text
    encoded = text.removeprefix(BASE64_PREFIX) if marked else text
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise JobDefinitionError(f"jobPars is marked base64 but does not decode: {encoded[:60]!r}", *ident) from None


def parse_job(d: Any) -> Job:
    """Parse one job definition; raise JobDefinitionError if the pilot cannot run it."""
    if not isinstance(d, dict):
        raise JobDefinitionError(f"expected a JSON object, got {type(d).__name__}")
    try:
        panda_id = _int(d, "PandaID", (None, 0))
    except JobDefinitionError:
        panda_id = None
    if not panda_id or panda_id <= 0:
        raise JobDefinitionError(f"no valid PandaID ({d.get('PandaID')!r})")
    try:
        attempt_nr = _int(d, "attemptNr", (panda_id, 0)) or 0
    except JobDefinitionError:
        attempt_nr = 0
    ident = (panda_id, attempt_nr)

    def num(key: str) -> int | None:
        return _int(d, key, ident)

    # inputs: inFiles and its aligned lists
    in_files = [check_lfn(lfn, ident) for lfn in _list(d, "inFiles") if lfn]
    n_in = len(in_files)
    guids = _aligned(d, "GUID", n_in, ident)
    sizes = _aligned(d, "fsize", n_in, ident)
    checksums = _aligned(d, "checksum", n_in, ident)
    scopes_in = _aligned(d, "scopeIn", n_in, ident, allow_single=True)
    ddm_in = _aligned(d, "ddmEndPointIn", n_in, ident, allow_single=True)
    datasets_in = _aligned(d, "realDatasetsIn", n_in, ident, allow_single=True)
    tokens_in = _aligned(d, "prodDBlockToken", n_in, ident, allow_single=True)
    inputs = []
    for i, lfn in enumerate(in_files):
        size = sizes[i]
        if size and not size.isdigit():
            raise JobDefinitionError(f"fsize of {lfn} is not a number: {size!r}", *ident)
        inputs.append(FileSpec(
            lfn=lfn, scope=scopes_in[i], guid=guids[i], fsize=int(size) if size else None,
            checksum=parse_checksum(checksums[i], ident), ddm_endpoint=ddm_in[i],
            dataset=datasets_in[i], dispatch_token=tokens_in[i],
        ))

    # outputs: outFiles includes the log file; scopeOut has no entry for the log
    log_lfn = _text(d, "logFile")
    if log_lfn:
        check_lfn(log_lfn, ident)
    out_files = [check_lfn(lfn, ident) for lfn in _list(d, "outFiles") if lfn]
    if log_lfn and log_lfn not in out_files:
        out_files.append(log_lfn)
    n_out = len(out_files)
    ddm_out = _aligned(d, "ddmEndPointOut", n_out, ident, allow_single=True)
    datasets_out = _aligned(d, "realDatasets", n_out, ident, allow_single=True)
    dblocks_out = _aligned(d, "destinationDblock", n_out, ident, allow_single=True)
    data_outs = [lfn for lfn in out_files if lfn != log_lfn]
    scopes_out = _list(d, "scopeOut")
    if len(scopes_out) == n_out and log_lfn:
        scopes_out = [s for s, lfn in zip(scopes_out, out_files, strict=True) if lfn != log_lfn]
    if scopes_out and len(scopes_out) not in (1, len(data_outs)):
        raise JobDefinitionError(f"scopeOut has {len(scopes_out)} entries for {len(data_outs)} outputs",
                                 *ident)
    outputs, log = [], None
    j = 0
    for i, lfn in enumerate(out_files):
        spec = FileSpec(lfn=lfn, ddm_endpoint=ddm_out[i], dataset=datasets_out[i],
                        destination_dblock=dblocks_out[i])
        if lfn == log_lfn:
            spec.scope = _text(d, "scopeLog")
            spec.guid = _text(d, "logGUID")
            log = spec
        else:
            spec.scope = scopes_out[j] if len(scopes_out) > 1 else (scopes_out[0] if scopes_out else "")
            j += 1
            outputs.append(spec)

    transformation = _text(d, "transformation")
    if not transformation:
        raise JobDefinitionError("no transformation to run", *ident)

    return Job(
        panda_id=panda_id,
        attempt_nr=attempt_nr,
        job_name=_text(d, "jobName"),
        job_definition_id=num("jobDefinitionID"),
        jobset_id=num("jobsetID"),
        task_id=num("taskID"),
        prod_source_label=_text(d, "prodSourceLabel"),
        processing_type=_text(d, "processingType"),
        transformation=transformation,
        job_pars=job_pars(d, ident),
        sw_release=_text(d, "swRelease"),
        homepackage=_text(d, "homepackage"),
        cmtconfig=_text(d, "cmtConfig"),
        container_name=_text(d, "container_name"),
        inputs=inputs,
        outputs=outputs,
        log=log,
        max_cpu_count=num("maxCpuCount"),
        max_walltime=num("maxWalltime"),
        max_disk_count=num("maxDiskCount"),
        min_ram_count=num("minRamCount"),
        core_count=num("coreCount") or 1,
        resource_type=_text(d, "resource_type") or _text(d, "resourceType"),
        event_service=_flag(d, "eventService", False),
        looping_check=_flag(d, "loopingCheck", True),
        alt_stage_out=_text(d, "altStageOut"),
        debug=_flag(d, "debug", False),
        transfer_type=_text(d, "transferType"),
        allow_no_output=[x for x in _list(d, "allowNoOutput") if x],
        raw=dict(d),
    )


def log_only_job(d: Any, exc: JobDefinitionError) -> Job | None:
    """What a broken definition still allows: a job that only stages its log out (with the pilot's
    diag in it), so that the failure is reported with its log as the server expects. None when the
    definition names no job id or no usable log file."""
    if exc.panda_id is None or not isinstance(d, dict):
        return None
    lfn = _text(d, "logFile")
    try:
        check_lfn(lfn)
    except JobDefinitionError:
        return None
    return Job(panda_id=exc.panda_id, attempt_nr=exc.attempt_nr,
               log=FileSpec(lfn=lfn, scope=_text(d, "scopeLog"), guid=_text(d, "logGUID")), raw=dict(d))
