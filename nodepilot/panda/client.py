"""The one server interface the pilot uses, whatever the dialect (docs/protocol.md section 1).

Callers speak the legacy field names of sections 2 and 3; each dialect adapter translates them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


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
