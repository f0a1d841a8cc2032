"""The pilot's queue data from every source it was given (docs/queues.md):

1. the CRIC queue record: a flat ``queuedata.json`` (``--queuedata`` when it is a CRIC record, else
   ``<workdir>/queuedata.json``), then ``--queuedata-url``; the first that loads is merged over the entry
   of ``--queuedata-dump`` (a CRIC dump keyed by queue), the former winning key by key;
2. the DDM endpoints: ``--storagedata-url``, then ``<workdir>/cric_ddmendpoints.json``;
3. our own settings (``--queuedata`` in our format) over the result: a whole queue for a site without
   CRIC, or additions to its CRIC definition;
4. nothing given: the built-in local queue on ``--se-dir`` (for ``nodepilot run`` and the local job server).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nodepilot.queue import activities
from nodepilot.queue.model import Endpoint, QueueConfigError, QueueData
from nodepilot.queue.sources import Source, SourceFailed, deep_merge, first_loaded, read_json_file

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig
    from nodepilot.queue.schema import Overlay

log = logging.getLogger(__name__)

LOCAL_QUEUEDATA = "queuedata.json"
LOCAL_DDMENDPOINTS = "cric_ddmendpoints.json"
CACHE_DIR = "queuedata-cache"


def is_cric(doc: Any) -> bool:
    """A CRIC queue record names its queue in ``nickname``; our own settings never do."""
    return isinstance(doc, dict) and "nickname" in doc


def _source(where: str, cache: Path, queue: str = "", dump: bool = False) -> Source:
    """A path, or an http(s)/file URL (``{pandaqueue}`` replaced by the queue's name); a dump is keyed by
    the queue's name."""
    where = where.replace("{pandaqueue}", queue).replace("{queue}", queue)
    url = urlsplit(where).scheme in ("http", "https", "file")
    if dump:
        return Source("dump", where, queue, cache if url else None)
    return Source("url", where, "", cache) if url else Source("file", where)


def load(config: PilotConfig) -> QueueData:
    work = Path(config.work_dir)
    cache_dir = work / CACHE_DIR
    own_doc, own_where = None, ""
    master: list[Source] = []
    if config.queuedata_file:
        own_where = config.queuedata_file
        try:
            own_doc = read_json_file(Path(own_where))
        except SourceFailed as exc:  # the file named on the command line: no other source stands in for it
            raise QueueConfigError(f"{own_where}: {exc}") from None
        if is_cric(own_doc):
            master.append(Source("file", own_where))
            own_doc = None
    elif (work / LOCAL_QUEUEDATA).is_file():
        master.append(Source("file", str(work / LOCAL_QUEUEDATA)))
    url = config.queuedata_url or os.environ.get("QUEUEDATA_SERVER_URL", "")
    if url:
        master.append(_source(url, cache_dir / f"queuedata-{config.queue}.json", config.queue))
    dump = config.queuedata_dump or os.environ.get("LOCAL_AGIS_SCHEDCONF", "")
    queue = _from_cric(config, master, dump, cache_dir) if master or dump else None
    if own_doc is not None:
        from nodepilot.queue.schema import Overlay, validate  # pydantic: only for what a file says

        overlay = validate(Overlay, own_doc, own_where)
        if queue is None:  # our own settings alone: over the built-in local queue when there is a local SE
            queue = (QueueData.default(config.queue, Path(config.se_dir)) if config.se_dir
                     else QueueData(name=config.queue, site=config.queue))
        queue = apply_overlay(queue, overlay, own_where)
    if queue is None:
        if not config.se_dir:
            raise QueueConfigError("no storage defined: give the queue's CRIC definition (--queuedata-url, "
                                   "--queuedata-dump, --queuedata) or our own settings (--queuedata), or "
                                   "--se-dir for a local SE")
        return QueueData.default(config.queue, Path(config.se_dir))
    if not queue.name:
        queue.name = config.queue
    return queue


def _from_cric(config: PilotConfig, master: list[Source], dump: str, cache_dir: Path) -> QueueData:
    found = first_loaded(master, f"queue {config.queue}")
    record: dict[str, Any] = {}
    where = ""
    if found is not None:
        where, record = str(found[0]), found[1]
        if not isinstance(record, dict):
            raise QueueConfigError(f"{where}: expected one queue record (an object), got {type(record).__name__}")
    if dump:
        source = _source(dump, cache_dir / "schedconfig-dump.json", config.queue, dump=True)
        dumped = first_loaded([source], f"queue {config.queue}")
        if dumped is not None:
            record = deep_merge(dumped[1], record) if isinstance(dumped[1], dict) else record
            where = where or str(source)
    if not record:
        tried = ", ".join(str(s) for s in master + ([_source(dump, cache_dir, config.queue, True)] if dump else []))
        raise QueueConfigError(f"queue {config.queue}: no queue definition could be read (tried {tried})")
    from nodepilot.queue import cric
    from nodepilot.queue.schema import CricQueue, validate

    queue_record = validate(CricQueue, record, where)
    ddms = _ddm_endpoints(config, cache_dir) if queue_record.astorages else {}
    return cric.to_queuedata(queue_record, ddms, where)


def _ddm_endpoints(config: PilotConfig, cache_dir: Path) -> dict[str, Any]:
    from nodepilot.queue import cric

    sources = []
    url = config.storagedata_url or os.environ.get("STORAGEDATA_SERVER_URL", "")
    if url:
        sources.append(_source(url, cache_dir / "ddmendpoints.json"))
    local = Path(config.work_dir) / LOCAL_DDMENDPOINTS
    if local.is_file():
        sources.append(Source("file", str(local)))
    found = first_loaded(sources, "DDM endpoints")
    if found is None:
        tried = ", ".join(str(s) for s in sources) or "none given"
        raise QueueConfigError(f"the queue names storage (astorages) but no DDM endpoints could be read "
                               f"(--storagedata-url or <workdir>/{LOCAL_DDMENDPOINTS}; tried: {tried})")
    return cric.parse_ddms(found[1], str(found[0]))


def apply_overlay(queue: QueueData, overlay: Overlay, where: str) -> QueueData:
    """Our own settings over the queue: each one given replaces the queue's."""
    given = overlay.model_dump(exclude_none=True, exclude={"endpoints", "copytools"})
    for key, value in given.items():
        setattr(queue, key, value)
    copytools = {a: [activities.mover_of(n, f"{where}: copytools.{a}") for n in names]
                 for a, names in (overlay.copytools or {}).items()}
    queue.copytools.update(copytools)
    for activity, items in (overlay.endpoints or {}).items():
        endpoints = [Endpoint(str(e), str(e)) if isinstance(e, str) else Endpoint(e.name, e.url, e.id)
                     for e in items]
        activities.check_endpoints(activity, endpoints, copytools.get(activity, []), where)
        queue.endpoints[activity] = endpoints
    return queue
