"""The one place that picks the server client for a configuration: API v1, legacy, the relay
(a compute node behind a front-end), Harvester's shared files (push mode) or a job file (standalone mode)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nodepilot.panda.client import ServerClient

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig


API_DIALECTS = ("v1", "legacy", "relay")


def check_api(api: str) -> None:
    """ValueError (one line) for an API dialect no client speaks."""
    if (api or "v1").lower() not in API_DIALECTS:
        raise ValueError(f"unknown PanDA API dialect {api!r}: expected {', '.join(map(repr, API_DIALECTS))}")


def make_client(config: PilotConfig) -> ServerClient:
    if config.harvester_dir:  # no server at all: Harvester's files in the access point
        from nodepilot.panda.harvester import HarvesterClient
        from nodepilot.panda.harvester_files import HarvesterFiles

        files = HarvesterFiles(Path(config.harvester_dir), kill_worker=config.harvester_kill_file)
        return HarvesterClient(files, config.harvester_wait_s, config.harvester_heartbeat_s)
    if config.job_file:
        from nodepilot.panda.standalone import StandaloneClient

        updates = config.updates_file or str(Path(config.work_dir) / "updates.jsonl")
        return StandaloneClient(config.job_file, updates)
    api = (config.api or "v1").lower()
    if api == "relay":  # a compute node: every call through the front-end's Redis (nodepilot/panda/relay.py)
        from nodepilot.panda.relay import RelayClient, default_worker_id

        if not config.relay_url:
            raise ValueError("--api relay needs the front-end's Redis (--redis-url)")
        return RelayClient(config.relay_url, config.worker_id or default_worker_id(config.node), config.redis_url)
    check_api(api)
    if not config.server:
        raise ValueError("no PanDA server URL configured (and no job file for standalone mode)")
    if api == "legacy":
        from nodepilot.panda.legacy import LegacyClient

        return LegacyClient(config.server)
    from nodepilot.panda.api_v1 import ApiV1Client

    return ApiV1Client(config.server)
