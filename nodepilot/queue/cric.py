"""A CRIC PanDA-queue record and the DDM endpoints it names -> our ``QueueData`` (docs/queues.md)."""

from __future__ import annotations

import logging
from typing import Any

from nodepilot.queue import activities, roles
from nodepilot.queue.model import QueueData
from nodepilot.queue.schema import CricQueue, DdmEndpoint, QueueConfigError, validate
from nodepilot.values import flag

log = logging.getLogger(__name__)

# container_type users (``name:user;...``): the payload's own is "pilot"
APPTAINER_NAMES = ("singularity", "apptainer")
# catchall tokens nodepilot acts on; the others are said once, as not used
SUPPORTED_CATCHALL: frozenset[str] = frozenset()


def parse_ddms(doc: Any, where: str) -> dict[str, DdmEndpoint]:
    """The DDM endpoints document (keyed by endpoint name) checked entry by entry."""
    if not isinstance(doc, dict):
        raise QueueConfigError(f"{where}: expected an object keyed by DDM endpoint name, got {type(doc).__name__}")
    return {name: validate(DdmEndpoint, entry, where, prefix=name) for name, entry in doc.items()}


def container_types(text: str) -> dict[str, str]:
    """``"singularity:pilot;docker:wrapper"`` -> ``{"pilot": "singularity", "wrapper": "docker"}``."""
    out = {}
    for part in text.split(";"):
        name, _, user = part.strip().partition(":")
        if name and user:
            out[user.strip()] = name.strip().lower()
    return out


def to_queuedata(cric: CricQueue, ddms: dict[str, DdmEndpoint], where: str) -> QueueData:
    """Our queue data of a checked CRIC record; QueueConfigError when its storage cannot be used."""
    queue = QueueData(name=cric.nickname, site=cric.atlas_site or cric.gstat or cric.panda_resource or cric.nickname,
                      state=cric.state, status=cric.status, maxwdir_mb=cric.maxwdir, maxtime_s=cric.maxtime,
                      timefloor_min=cric.timefloor, corecount=cric.corecount or 1, maxrss_mb=cric.maxrss,
                      direct_access_lan=cric.direct_access_lan, direct_access_wan=cric.direct_access_wan,
                      catchall=cric.catchall)
    queue.allow_alt_stageout = flag(cric.params.get("allow_altstageout"))
    for activity in roles.DIRECTION:
        resolved = activities.resolve(activity, cric, ddms, where)
        if resolved is not None:
            queue.endpoints[activity] = resolved.endpoints
            queue.copytools[activity] = resolved.movers
    if any("rucio" in movers for movers in queue.copytools.values()):
        queue.stager = {"rucio": {"allow_lan": cric.allow_lan, "allow_wan": cric.allow_wan}}
    payload_container = container_types(cric.container_type).get("pilot", "")
    if payload_container in APPTAINER_NAMES:
        queue.isolation = {"mode": "apptainer"}
    elif payload_container:
        log.warning("%s: container_type %s for the payload is not supported: isolation decides", where,
                    payload_container)
    if cric.container_options and cric.container_options.lower() != "none":  # apptainer's options for the payload
        queue.isolation = {**queue.isolation, "options": cric.container_options}
    ignored = [t for t in cric.catchall.split() if t.split("=", 1)[0] not in SUPPORTED_CATCHALL]
    if ignored:
        log.info("%s: catchall tokens not used by nodepilot: %s", where, " ".join(ignored))
    return queue



