"""The queue as the pilot uses it, whatever its source (CRIC or our own settings, nodepilot/queue/):
its storage endpoints per activity, limits and our own settings for the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.queue.roles import first_present

LOCAL_SE_ID = 1  # the built-in local SE's endpoint id (objstoreID of event-range reports to it)


class QueueConfigError(ValueError):
    """A queue input that cannot be used: the message is one line naming the file, the field and what was
    expected."""


@dataclass
class Endpoint:
    """A storage endpoint: a name the server knows (ddmEndpoint) and where it is."""

    name: str
    url: str  # file:///abs/dir, root://host:port//path, https://host/path, s3://...
    id: int | None = None  # the DDM endpoint's numeric id: event-range reports name it as objstoreID


@dataclass
class QueueData:
    """The site configuration the pilot needs (a subset of CRIC/AGIS queue data)."""

    name: str = "LOCAL_TEST"
    site: str = ""
    state: str = ""  # CRIC: ACTIVE, else no job is asked for
    status: str = ""  # CRIC: online, test, brokeroff...; offline: no job is asked for
    maxwdir_mb: int = 0  # 0: no limit configured
    maxtime_s: int = 0
    timefloor_min: int | None = None  # None: jobs while the slot's time allows; 0: one job; N: new jobs for N min
    corecount: int = 1
    maxrss_mb: int = 0
    envsetup: str = ""  # shell text sourced in the payload's own shell before it runs
    copysetup: str = ""
    pilot_user: str = ""  # experiment plug-in of this queue (when --pilot-user is not given)
    # per activity (read_lan, write_lan, pl, es_events; log_se: the secondary log SE): ordered endpoints,
    # primary first
    endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)
    copytools: dict[str, list[str]] = field(default_factory=dict)  # per activity: movers (posix, xrootd...)
    catchall: str = ""
    # watchdog overrides (docs/operations.md): period_s, sample_interval_s, looping_limit_s,
    # disk_min_free_mb, stdout_limit_mb, output_limit_mb, memory_limit_mb
    watchdog: dict[str, float] = field(default_factory=dict)
    allow_alt_stageout: bool = False  # outputs may go to the next write_lan/pl endpoint when the primary fails
    direct_access_lan: bool = False  # inputs may be read in place (no copy) when the job allows it
    direct_access_wan: bool = False
    # stager overrides (services/stager/README.md): attempts, backoff_s, backoff_cap_s, files_per_request,
    # transfers_per_pilot, trace_url, trace_timeout_s, trace_retry_cap_s, copysetup_timeout_s
    stager: dict[str, Any] = field(default_factory=dict)
    # payload isolation (services/runner/isolation.py): mode (auto|apptainer|bwrap|none), allow_plain, binds, network
    isolation: dict[str, Any] = field(default_factory=dict)
    # event service (services/eventclient/README.md): batch (ranges per fetch), zip_outputs (K: outputs staged
    # in zips of up to K), zip_seconds (a zip goes out at the latest this long after its first output)
    es: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, name: str, se_dir: Path) -> QueueData:
        local = Endpoint("LOCAL_SE", se_dir.resolve().as_uri(), id=LOCAL_SE_ID)
        activities = ("read_lan", "write_lan", "pl", "es_events")
        return cls(
            name=name,
            site=name,
            endpoints={a: [local] for a in activities},
            copytools={a: ["posix"] for a in activities},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueData:
        """From pilot.json (written by us): nodepilot/queue/ checks the files people write."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        eps = known.pop("endpoints", {}) or {}
        queue = cls(**known)
        queue.endpoints = {
            activity: [Endpoint(**e) if isinstance(e, dict) else Endpoint(str(e), str(e)) for e in items]
            for activity, items in eps.items()
        }
        return queue

    def endpoints_for(self, activity: str) -> list[Endpoint]:
        """The activity's endpoints, primary first; an activity without its own takes those of its stand-ins
        (``pl`` then ``write_lan``, ``default``, the old ``pr``/``pw`` roles: nodepilot/queue/roles.py)."""
        return list(first_present(activity, self.endpoints)[1])
