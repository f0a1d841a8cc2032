"""CRIC-shaped test inputs, written from the field tables of docs/queues.md (not copied from any site):
a PanDA-queue record with the keys the pilot reads plus a few it does not, and DDM endpoint records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def queue_record(name: str, astorages: dict[str, list[str]], acopytools: dict[str, list[str]],
                 **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "nickname": name, "panda_resource": name, "atlas_site": f"{name}_SITE", "gstat": f"{name}_GSTAT",
        "state": "ACTIVE", "status": "online", "type": "production", "resource_type": "grid",
        "maxtime": 0, "timefloor": 0, "corecount": 1, "maxrss": 2000, "maxwdir": 2000, "maxinputsize": 1000,
        "copytools": {tool: {"setup": ""} for tools in acopytools.values() for tool in tools},
        "acopytools": acopytools, "astorages": astorages, "acopytools_schemas": {}, "aprotocols": {},
        "direct_access_lan": False, "direct_access_wan": False, "allow_lan": True, "allow_wan": False,
        "container_type": "", "container_options": "", "catchall": "", "params": {}, "is_cvmfs": False,
        "cmtconfig": "", "appdir": "", "environ": "", "pledgedcpu": 0, "zip_time_gap": 0,
        "cloud": "XX", "country": "Nowhere", "siteid": name, "tier": "T2",  # keys the pilot does not read
    }
    record.update(over)
    return record


def ddm_endpoint(ddm_id: int, name: str, protocols: dict[str, list[tuple[str, str]]], **over: Any) -> dict[str, Any]:
    """``protocols``: arprotocols activity -> [(endpoint, path)], e.g. ``{"write_lan": [("root://h:1/", "/se")]}``."""
    record: dict[str, Any] = {
        "id": ddm_id, "name": name, "type": "DATADISK", "token": "", "is_deterministic": True, "state": "ACTIVE",
        "site": "TEST_SITE", "rprotocols": {}, "resource": {},
        "arprotocols": {activity: [{"endpoint": endpoint, "path": path, "flavour": "", "id": ddm_id * 10 + i}
                                   for i, (endpoint, path) in enumerate(entries)]
                        for activity, entries in protocols.items()},
    }
    record.update(over)
    return record


def url_protocol(url: str) -> tuple[str, str]:
    """A server URL such as ``root://127.0.0.1:1094//se`` as CRIC splits it: (endpoint, path)."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    return f"{scheme}://{host}/" if scheme == "root" else f"{scheme}://{host}", "/" + path


def file_protocol(directory: Path) -> tuple[str, str]:
    return "file://", str(directory.resolve())


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return str(path)
