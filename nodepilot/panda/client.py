"""The one server interface the pilot uses, whatever the dialect (PANDA_PROTOCOL.md section 1).

Callers speak the legacy field names of sections 2 and 3; each dialect adapter translates them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodepilot.errors import ErrorCode

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig


class ServerError(Exception):
    """A call that did not succeed. ``retryable``: a later attempt may succeed (connection
    trouble, 5xx, a garbled reply); False: the server refused this call as it is."""

    def __init__(self, message: str, retryable: bool = False,
                 code: int = ErrorCode.SERVER_COMMUNICATION) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = int(code)


@dataclass
class UpdateReply:
    command: str | None  # None, "tobekilled", "softkill", "debug", "debugoff", ...
    status_code: int
    raw: dict[str, Any]


class ServerClient(ABC):
    @abstractmethod
    async def acquire_job(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """One raw job definition, or None when the server has no job for us."""

    @abstractmethod
    async def update_job(self, fields: dict[str, Any]) -> UpdateReply:
        """Deliver one update; raise ServerError unless the server accepted it."""

    @abstractmethod
    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]:
        """Up to ``n_ranges`` event ranges of an event-service job; [] when there are no more."""

    @abstractmethod
    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]:
        """Report event ranges (version 1: per zip file, version 0: single ranges). Returns
        ``{"Returns": <per range, as the server answered>, "Commands": <per PanDA ID, or None>}``."""

    async def update_worker_status(  # noqa: B027 - no server (standalone), nothing to do
            self, worker_id: str, harvester_id: str, status: str, node_id: str | None = None) -> None:
        """The batch worker started/finished, as the pilot sees it (for Harvester's workers)."""

    async def update_worker_node(self, inventory: dict[str, Any]) -> None:  # noqa: B027 - no server, nothing to do
        """The worker node's hardware (``update_worker_node`` fields; new API only)."""

    async def update_worker_node_gpu(self, gpu: dict[str, Any]) -> None:  # noqa: B027 - no server, nothing to do
        """One GPU model of the node (``update_worker_node_gpu`` fields; new API only)."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        pass

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def normalize_command(command: Any) -> str | None:
    """Commands as the pilot acts on them: no command is None; older servers answer a wrong
    attempt number with ``badattemptnr``, which means the same as ``tobekilled``."""
    if not isinstance(command, str) or command.strip().lower() in ("", "null", "none"):
        return None
    command = command.strip()
    return "tobekilled" if command.lower() == "badattemptnr" else command


def make_client(config: PilotConfig) -> ServerClient:
    if config.job_file:
        from nodepilot.panda.standalone import StandaloneClient

        updates = config.updates_file or str(Path(config.work_dir) / "updates.jsonl")
        return StandaloneClient(config.job_file, updates)
    api = (config.api or "v1").lower()
    if api == "relay":  # a compute node: every call through the front-end's Redis (nodepilot/relay.py)
        from nodepilot.relay import RelayClient, default_worker_id

        if not config.relay_url:
            raise ValueError("--api relay needs the front-end's Redis (--redis-url)")
        return RelayClient(config.relay_url, config.worker_id or default_worker_id(config.node), config.redis_url)
    if api not in ("v1", "legacy"):
        raise ValueError(f"unknown PanDA API dialect {config.api!r}: expected 'v1', 'legacy' or 'relay'")
    if not config.server:
        raise ValueError("no PanDA server URL configured (and no job file for standalone mode)")
    if api == "legacy":
        from nodepilot.panda.legacy import LegacyClient

        return LegacyClient(config.server)
    from nodepilot.panda.api_v1 import ApiV1Client

    return ApiV1Client(config.server)
