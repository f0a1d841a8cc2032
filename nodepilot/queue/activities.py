"""Activity -> copytools, storage endpoints and protocol, resolved as the reference pilot does
(docs/queues.md): copytools from ``acopytools`` (the activity, its stand-ins, then the ``copytools`` keys),
endpoints from ``astorages`` (same order), and on each endpoint the first ``arprotocols`` entry whose
scheme one of the activity's copytools serves: that copytool's mover moves the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nodepilot.queue import roles
from nodepilot.queue.model import Endpoint, QueueConfigError

if TYPE_CHECKING:  # pydantic models: imported only where queue data is read (nodepilot/queue/loader.py)
    from nodepilot.queue.schema import CricQueue, DdmEndpoint

# copytool names of queue definitions -> our movers (services/stager/movers)
COPYTOOL_MOVERS = {
    "mv": "posix", "copy": "posix", "cp": "posix", "posix": "posix",
    "xrdcp": "xrootd", "xrootd": "xrootd",
    "gfal": "webdav", "gfalcopy": "webdav", "webdav": "webdav",
    "s3": "s3", "objectstore": "s3",
    "rucio": "rucio",
}
# the URL schemes each mover serves
MOVER_SCHEMES = {
    "posix": ("file",),
    "xrootd": ("root", "xroot"),
    "webdav": ("https", "davs", "http", "dav"),
    "s3": ("s3",),
    "rucio": ("rucio",),  # rucio:///<RSE>: replicas and destinations come from Rucio (docs/movers.md)
}
# the endpoint's arprotocols activities tried for a transfer in each direction, in order
PROTOCOL_ACTIVITIES = {"in": ("read_lan", "read_wan", "r"), "out": ("write_lan", "write_wan", "w")}


@dataclass
class Resolved:
    endpoints: list[Endpoint]
    movers: list[str]
    storage_role: str  # the astorages key the endpoints came from
    copytool_role: str


def mover_of(copytool: str, where: str) -> str:
    mover = COPYTOOL_MOVERS.get(copytool.strip().lower())
    if mover is None:
        raise QueueConfigError(f"{where}: copytool {copytool!r} has no nodepilot mover; known: "
                               f"{', '.join(sorted(COPYTOOL_MOVERS))}")
    return mover


def movers_for(activity: str, queue: CricQueue, where: str) -> tuple[str, list[str]]:
    """(the acopytools key used, the movers of its copytools), or ("", []) when the queue names none."""
    role, names = roles.first_present(activity, queue.acopytools)
    if not names:
        role, names = "copytools", list(queue.copytools)
    return role, _unique([mover_of(n, f"{where}: {'acopytools.' + role if role != 'copytools' else role}")
                          for n in names])


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def served_by(url: str, movers: list[str]) -> bool:
    return any(scheme_of(url) in MOVER_SCHEMES.get(m, ()) for m in movers)


def protocol_url(ddm: DdmEndpoint, direction: str, movers: list[str]) -> str:
    """``endpoint + path`` of the endpoint's first protocol a mover of ``movers`` serves ("" if none)."""
    for activity in PROTOCOL_ACTIVITIES[direction]:
        for protocol in ddm.arprotocols.get(activity, []):
            url = protocol.endpoint + protocol.path  # as the reference pilot joins them
            if served_by(url, movers):
                return url
    return ""


def resolve(activity: str, queue: CricQueue, ddms: dict[str, DdmEndpoint], where: str) -> Resolved | None:
    """The activity's endpoints (primary first) and movers; None when the queue has no storage for it.
    QueueConfigError when it names storage that cannot be used."""
    storage_role, names = roles.first_present(activity, queue.astorages)
    if not names:
        return None
    copytool_role, movers = movers_for(activity, queue, where)
    if not movers:
        raise QueueConfigError(f"{where}: acopytools: no copytool for {activity} "
                               f"(looked for {', '.join(roles.lookup_order(activity))} and copytools)")
    direction = roles.DIRECTION.get(activity, "out")
    endpoints = []
    for name in _unique(names):
        ddm = ddms.get(name)
        field = f"astorages.{storage_role}"
        if ddm is None:
            raise QueueConfigError(f"{where}: {field}: endpoint {name!r} is not among the DDM endpoints read")
        if direction == "out" and not ddm.is_deterministic:
            raise QueueConfigError(f"{where}: {field}: endpoint {name!r} is not deterministic (no output path)")
        url = f"rucio:///{name}" if "rucio" in movers else protocol_url(ddm, direction, movers)
        if not url:
            raise QueueConfigError(
                f"{where}: {field}: endpoint {name!r} has no {'/'.join(PROTOCOL_ACTIVITIES[direction])} protocol "
                f"for the copytools of {activity} ({', '.join(movers)}: schemes "
                f"{', '.join(s for m in movers for s in MOVER_SCHEMES[m])})")
        endpoints.append(Endpoint(name, url, ddm.id))
    return Resolved(endpoints, movers, storage_role, copytool_role)


def check_endpoints(activity: str, endpoints: list[Endpoint], movers: list[str], where: str) -> None:
    """Our own settings: each endpoint of the activity must be served by one of its copytools."""
    for endpoint in endpoints:
        if not scheme_of(endpoint.url):
            raise QueueConfigError(f"{where}: endpoints.{activity}: {endpoint.url!r} is not a URL")
        if movers and not served_by(endpoint.url, movers):
            raise QueueConfigError(f"{where}: endpoints.{activity}: {endpoint.url} is not served by its copytools "
                                   f"({', '.join(movers)})")
        if not movers and not any(scheme_of(endpoint.url) in s for s in MOVER_SCHEMES.values()):
            raise QueueConfigError(f"{where}: endpoints.{activity}: no mover for {scheme_of(endpoint.url)}:// URLs")


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))
