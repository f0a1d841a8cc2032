"""The queues the suite's jobs run on, as CRIC would describe them, and the pilot's queue data.

One site with two storage endpoints: a disk (inputs, outputs, logs) and an event-service store
whose numeric id is the ``objstoreID`` the pilot must name in its event-range reports. The
server's own configurator reads these dumps (sites, DDM endpoints, PanDA queues) from files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SITE = "NODEPILOT_SITE"
QUEUE = "NODEPILOT_QUEUE"
DISK = "NODEPILOT_DISK"
ES_STORE = "NODEPILOT_ES"
DISK_ID = 9001
ES_STORE_ID = 9002
VO = "wlcg"


def _endpoint(name: str, endpoint_id: int, token: str) -> dict[str, Any]:
    return {"name": name, "id": endpoint_id, "site": SITE, "rc_site": SITE, "state": "ACTIVE", "token": token,
            "type": "DATADISK", "is_tape": False, "is_deterministic": True, "resource": {"endpoint": "file:///"}}


def dumps(queues: tuple[str, ...] = (QUEUE,)) -> dict[str, Any]:
    """The CRIC dumps the configurator reads, by the name of their ``CRIC_URL_*`` setting."""
    site = {"name": SITE, "state": "ACTIVE", "tier_level": 2, "datapolicies": [], "cloud": "WORLD",
            "ddmendpoints": {DISK: {"state": "ACTIVE"}, ES_STORE: {"state": "ACTIVE"}},
            "presources": {SITE: {q: {"state": "ACTIVE"} for q in queues}}}
    schedconfig = {q: _queue(q) for q in queues}
    return {
        "SITES": {SITE: site},
        "DDMENDPOINTS": {DISK: _endpoint(DISK, DISK_ID, "ATLASDATADISK"),
                         ES_STORE: _endpoint(ES_STORE, ES_STORE_ID, "ATLASEVENTSERVICE")},
        "SCHEDCONFIG": schedconfig,
        "DDMBLACKLIST": {}, "DDMBLACKLIST_READ": {}, "DDMBLACKLIST_FULL": {},
    }


def _queue(name: str) -> dict[str, Any]:
    return {
        "name": name, "panda_resource": name, "nickname": name, "siteid": name, "atlas_site": SITE,
        "rc_site": SITE, "cloud": "WORLD", "country": "Nowhere", "status": "online", "state": "ACTIVE",
        "type": "production", "resource_type": "GRID", "vo_name": VO, "workflow": "pull", "capability": "score",
        "corecount": 1, "corepower": 10, "maxtime": 86400, "mintime": 0, "maxwdir": 100000, "maxrss": 4000,
        "minrss": 0, "maxinputsize": 100000, "pledgedcpu": 0, "tier": "T2", "tier_level": 2, "jobseed": "all",
        "is_cvmfs": False, "direct_access_lan": False, "direct_access_wan": False, "catchall": "",
        "fairsharepolicy": "", "harvester": "", "pilot_manager": "local", "wnconnectivity": "full",
        "ddm": DISK, "astorages": {"read_lan": [DISK], "write_lan": [DISK], "pl": [DISK], "es_events": [ES_STORE]},
        "acopytools": {"read_lan": ["rucio"], "write_lan": ["rucio"], "pl": ["rucio"], "es_events": ["rucio"]},
        "params": {}, "queues": [], "comment": "", "coreenergy": 10, "maxdiskio": 0, "memory": 4000,
        "space": 100000, "lastmod": "2026-01-01T00:00:00",
    }


def write_dumps(directory: Path) -> None:
    """One JSON file per dump, named as server.PandaHome points the configurator at them."""
    for name, data in dumps().items():
        (directory / f"{name.lower()}.json").write_text(json.dumps(data, indent=1))
    usage = {"storage": {"used": 0, "free": 10**12, "updated_at": "2026-01-01 00:00:00"}}
    (directory / "rse_usage.json").write_text(json.dumps({DISK: usage, ES_STORE: usage}))


def queuedata(se_dir: Path, es_dir: Path, **extra: Any) -> dict[str, Any]:
    """The pilot's queue data for QUEUE: the disk as a local directory, the ES store with its id."""
    disk = {"name": DISK, "url": se_dir.resolve().as_uri(), "id": DISK_ID}
    es = {"name": ES_STORE, "url": es_dir.resolve().as_uri(), "id": ES_STORE_ID}
    return {"name": QUEUE, "site": SITE, "corecount": 1,
            "endpoints": {"read_lan": [disk], "write_lan": [disk], "pl": [disk], "es_events": [es]}, **extra}
