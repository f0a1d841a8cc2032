"""Where a job's event ranges come from and where their status goes (docs/protocol.md section 4).

``ServerRangeSource`` asks the PanDA server through the pilot's ``ServerClient``;
``FileRangeSource`` serves a standalone job from a JSON list of ranges and appends every report
as one JSON line to a file (``{"time", "version", "eventRanges"}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from services.eventclient.settle import HANDED_OUT

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig

log = logging.getLogger(__name__)


class RangeSource(Protocol):
    async def acquire(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` new ranges; [] when the source has no more."""

    async def report(self, ranges: list[dict[str, Any]], version: int) -> list[Any] | None:
        """Deliver one status update (version 1: zipFile records, 0: single ranges); raise on failure.
        Returns the source's answer per range (``Returns``), or None when it gives none."""

    async def statuses(self, range_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """What the source holds of these ranges (``{id: {"status", ...}}``; a range it does not know
        is absent); None when this source cannot tell. Raises when it cannot be asked now."""

    async def aclose(self) -> None: ...


class EventRangeClient(Protocol):
    """The event-range calls of ``nodepilot.panda.client.ServerClient``."""

    async def acquire_event_ranges(self, job_id: int, jobset_id: int, task_id: int | None,
                                   n_ranges: int) -> list[dict[str, Any]]: ...

    async def update_event_ranges(self, ranges: list[dict[str, Any]], version: int = 1) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class EventStatusClient(Protocol):
    async def get_event_range_statuses(self, job_id: int, task_id: int) -> dict[str, dict[str, Any]]: ...


class ServerRangeSource:
    def __init__(self, client: EventRangeClient, job_id: int, jobset_id: int, task_id: int | None) -> None:
        self.client, self.job_id, self.jobset_id, self.task_id = client, job_id, jobset_id, task_id

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        return list(await self.client.acquire_event_ranges(self.job_id, self.jobset_id, self.task_id, n) or [])

    async def report(self, ranges: list[dict[str, Any]], version: int) -> list[Any] | None:
        reply = await self.client.update_event_ranges(ranges, version=version)
        returns = reply.get("Returns") if isinstance(reply, dict) else None
        if isinstance(returns, list) and not all(returns):
            log.warning("job %s: the server did not take every range of a version %d update: %.300r",
                        self.job_id, version, returns)
        return returns if isinstance(returns, list) else None

    async def statuses(self, range_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        if not range_ids:
            return None
        held = await self._held(self.task_id if self.task_id is not None else int(range_ids[0].split("-", 1)[0]))
        return None if held is None else {rid: held[rid] for rid in range_ids if rid in held}

    async def handed_out(self) -> list[str] | None:
        """The ranges of this job the server holds as handed out and not reported (``sent``, or
        ``running`` in our own server's ledger); None when it cannot tell."""
        held = await self._held(self.task_id) if self.task_id is not None else None
        return None if held is None else [rid for rid, item in held.items() if item.get("status") in HANDED_OUT]

    async def _held(self, task_id: int) -> dict[str, dict[str, Any]] | None:
        """The job's ranges as the server holds them; None when the client cannot look them up."""
        if getattr(self.client, "get_event_range_statuses", None) is None:
            return None
        status_client: EventStatusClient = self.client  # type: ignore[assignment]
        return await status_client.get_event_range_statuses(self.job_id, task_id)

    async def aclose(self) -> None:
        await self.client.aclose()


class FileRangeSource:
    """Standalone mode: the ranges of a JSON list file (or ``{"eventRanges": [...]}``), in order."""

    def __init__(self, ranges_file: str | Path, report_file: str | Path) -> None:
        self.ranges_file, self.report_file = Path(ranges_file), Path(report_file)
        self._ranges: list[dict[str, Any]] | None = None
        self._next = 0
        self._reported: set[tuple[str, str]] | None = None  # (eventRangeID, eventStatus) in the report file

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        if self._ranges is None:
            self._ranges = await asyncio.to_thread(self._load)
        batch = self._ranges[self._next:self._next + max(0, n)]
        self._next += len(batch)
        return batch

    def _load(self) -> list[dict[str, Any]]:
        data = json.loads(self.ranges_file.read_text())
        if isinstance(data, dict):
            data = data.get("eventRanges", [])
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{self.ranges_file}: expected a JSON list of event ranges")
        return data

    async def statuses(self, range_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """The last status the report file holds for each range."""
        if self._reported is None:
            self._reported = await asyncio.to_thread(self._load_reported)
        held = {rid: {"status": status} for rid, status in self._reported}
        return {rid: held[rid] for rid in range_ids if rid in held}

    async def report(self, ranges: list[dict[str, Any]], version: int) -> list[Any] | None:
        """Appended to the report file; a report repeated after a crash (reporting is at least once) is
        dropped, as the PanDA server ignores an identical repeated status."""
        if self._reported is None:
            self._reported = await asyncio.to_thread(self._load_reported)
        fresh = [r for r in (self._unreported(record) for record in ranges) if r is not None]
        if not fresh:
            return None
        line = json.dumps({"time": time.time(), "version": version, "eventRanges": fresh}) + "\n"
        await asyncio.to_thread(self._append, line)
        for record in fresh:
            self._reported.update(_keys(record))
        return None

    def _unreported(self, record: dict[str, Any]) -> dict[str, Any] | None:
        assert self._reported is not None
        inner = record.get("eventRanges")
        if isinstance(inner, list):  # a zipFile record (version 1) and its ranges
            left = [r for r in inner if _key(r) not in self._reported]
            return {**record, "eventRanges": left} if left else None
        return None if _key(record) in self._reported else record

    def _load_reported(self) -> set[tuple[str, str]]:
        reported: set[tuple[str, str]] = set()
        try:
            lines = self.report_file.read_text().splitlines()
        except FileNotFoundError:
            return reported
        for line in lines:
            try:
                for record in json.loads(line).get("eventRanges", []):
                    reported.update(_keys(record))
            except (ValueError, AttributeError, TypeError):
                continue  # a line cut short by a crash
        return reported

    def _append(self, line: str) -> None:
        self.report_file.parent.mkdir(parents=True, exist_ok=True)
        with self.report_file.open("a") as fh:
            fh.write(line)

    async def aclose(self) -> None:
        return None


def make_source(config: PilotConfig, job_id: int, jobset_id: int, task_id: int | None,
                ranges_file: str | None, report_file: str | None, workdir: Path) -> RangeSource:
    """A file source when the request names a ranges file, else the PanDA server of the config."""
    if ranges_file:
        return FileRangeSource(ranges_file, report_file or workdir.parent / f"ranges-{job_id}.jsonl")
    from nodepilot.panda.connect import make_client  # lazily: the server dialects are heavy

    client: Any = make_client(config)
    if not hasattr(client, "acquire_event_ranges") or not hasattr(client, "update_event_ranges"):
        raise ValueError(f"{type(client).__name__} cannot serve event ranges (and no ranges file was given)")
    return ServerRangeSource(client, job_id, jobset_id, task_id)


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return str(record.get("eventRangeID")), str(record.get("eventStatus"))


def _keys(record: dict[str, Any]) -> list[tuple[str, str]]:
    inner = record.get("eventRanges")
    return [_key(r) for r in inner if isinstance(r, dict)] if isinstance(inner, list) else [_key(record)]
