"""One schema for every queue input: our own settings (the overlay, unknown keys refused), the CRIC
PanDA-queue record and the CRIC DDM-endpoint record (their other keys kept, as CRIC has many).

Values are coerced the way the reference pilot reads CRIC: ``"NULL"``, ``null`` or ``""`` where a
number is expected give its default, dicts that arrive as Python-literal text are parsed.
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from nodepilot.queue.model import QueueConfigError

NULLS = ("", "null", "none")
__all__ = ["QueueConfigError"]  # defined beside the model: raised where pydantic is not imported


def _literal_dict(value: Any) -> Any:
    """A dict given as text (``"{'pr': ['xrdcp']}"``), as CRIC sometimes serves it."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in NULLS:
            return {}
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value  # left for the type check to name
    return {} if value is None else value


def _null_number(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in NULLS):
        return 0
    return value


def _null_text(value: Any) -> Any:
    return "" if value is None else value.strip() if isinstance(value, str) else value


Dict = Annotated[dict[str, Any], BeforeValidator(_literal_dict)]
ListDict = Annotated[dict[str, list[str]], BeforeValidator(_literal_dict)]
Int = Annotated[int, BeforeValidator(_null_number), Field(ge=0)]
Text = Annotated[str, BeforeValidator(_null_text)]


def _flag(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in NULLS:
        return False
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]


# --- our own settings (the overlay) -----------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointSpec(_Strict):
    name: str
    url: str = Field(min_length=1)
    id: int | None = None


class WatchdogSpec(_Strict):
    period_s: float | None = Field(None, gt=0)
    sample_interval_s: float | None = Field(None, gt=0)
    looping_limit_s: float | None = Field(None, gt=0)
    disk_min_free_mb: float | None = Field(None, ge=0)
    stdout_limit_mb: float | None = Field(None, gt=0)
    output_limit_mb: float | None = Field(None, gt=0)
    memory_limit_mb: float | None = Field(None, gt=0)
    time_budget_warn_s: float | None = Field(None, ge=0)
    time_budget_stop_s: float | None = Field(None, ge=0)
    time_budget_signal: int | None = Field(None, ge=1, le=64)


class RucioSpec(_Strict):
    """The ``rucio`` mover's settings (docs/movers.md, "Rucio")."""

    allow_lan: bool | None = None
    allow_wan: bool | None = None
    schemes: list[str] | None = None
    registration: Literal["pilot", "server"] | None = None
    site: str | None = None
    trace_url: str | None = None
    host: str | None = None
    auth_host: str | None = None
    auth_type: Literal["userpass", "x509", "x509_proxy", "oidc", "token"] | None = None
    account: str | None = None
    ca_cert: str | None = None
    vo: str | None = None


class StagerSpec(_Strict):
    attempts: int | None = None
    backoff_s: float | None = None
    backoff_cap_s: float | None = None
    files_per_request: int | None = None
    transfers_per_pilot: int | None = None
    trace_url: str | None = None
    trace_timeout_s: float | None = None
    trace_retry_cap_s: float | None = None
    copysetup_timeout_s: float | None = None
    rucio: RucioSpec | None = None


class IsolationSpec(_Strict):
    mode: Literal["auto", "apptainer", "bwrap", "none"] | None = None
    allow_plain: bool | None = None
    binds: list[str] | None = None
    network: bool | None = None
    options: str | None = None  # more apptainer exec options (CRIC's container_options), e.g. "-B /scratch"


class EventServiceSpec(_Strict):
    batch: int | None = Field(None, ge=1)
    zip_outputs: int | None = Field(None, ge=0)
    zip_seconds: float | None = Field(None, ge=0)
    objstore_id: int | None = Field(None, ge=0)  # the objstoreID of range reports when es_events has no id


class Overlay(_Strict):
    """Our own queue settings: a whole queue for sites without CRIC, or what a site adds to its CRIC
    definition (docs/queues.md). A key not listed here is a typo, and refused."""

    name: str | None = None
    site: str | None = None
    maxwdir_mb: int | None = Field(None, ge=0)
    maxtime_s: int | None = Field(None, ge=0)
    timefloor_min: int | None = Field(None, ge=0)
    corecount: int | None = Field(None, ge=1)
    maxrss_mb: int | None = Field(None, ge=0)
    envsetup: str | None = None
    copysetup: str | None = None
    pilot_user: str | None = None
    state: str | None = None
    status: str | None = None
    endpoints: dict[str, list[EndpointSpec | str]] | None = None
    copytools: dict[str, list[str]] | None = None
    watchdog: WatchdogSpec | None = None
    allow_alt_stageout: bool | None = None
    direct_access_lan: bool | None = None
    direct_access_wan: bool | None = None
    stager: StagerSpec | None = None
    isolation: IsolationSpec | None = None
    es: EventServiceSpec | None = None
    catchall: str | None = None


# --- CRIC ------------------------------------------------------------------------------
class CricQueue(BaseModel):
    """The PanDA-queue fields the pilot uses (docs/queues.md); the record's other keys are kept, unread."""

    model_config = ConfigDict(extra="allow")

    nickname: Text = Field(min_length=1)
    panda_resource: Text = ""
    atlas_site: Text = ""
    gstat: Text = ""
    state: Text = "ACTIVE"
    status: Text = "online"
    type: Text = ""
    resource_type: Text = ""
    maxtime: Int = 0
    timefloor: Int = 0
    corecount: Int = 0
    maxrss: Int = 0
    maxwdir: Int = 0
    copytools: Dict = {}
    acopytools: ListDict = {}
    astorages: ListDict = {}
    direct_access_lan: Flag = False
    direct_access_wan: Flag = False
    allow_lan: Flag = True  # replicas on the queue's read_lan storages may be read (rucio copytool)
    allow_wan: Flag = False  # replicas elsewhere may be read (rucio copytool)
    container_type: Text = ""
    container_options: Text = ""
    catchall: Text = ""
    params: Dict = {}

    @field_validator("copytools")
    @classmethod
    def _copytool_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {str(k): v for k, v in value.items()}


class Protocol(BaseModel):
    model_config = ConfigDict(extra="allow")

    endpoint: str = Field(min_length=1)
    path: Text = ""
    flavour: Text = ""


class DdmEndpoint(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | None = None
    name: Text = ""
    type: Text = ""
    is_deterministic: Flag = True
    arprotocols: Annotated[dict[str, list[Protocol]], BeforeValidator(_literal_dict)] = {}


# --- one-line errors ---------------------------------------------------------------------
def validate(model: type[BaseModel], data: Any, where: str, prefix: str = "") -> Any:
    """``model`` of ``data``, or QueueConfigError: ``<where>: <field>: expected ..., got ...``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise QueueConfigError(one_line(exc, where, prefix)) from None


def one_line(exc: ValidationError, where: str, prefix: str = "") -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("function-", "EndpointSpec")))
    field = ".".join(p for p in (prefix, loc) if p) or "(top level)"
    more = len(exc.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    if first["type"] == "extra_forbidden":
        return f"{where}: {field}: unknown setting (a typo?){tail}"
    got = first.get("input")
    return f"{where}: {field}: {first['msg'].lower()}, got {got!r:.80}{tail}"
