"""Jumbo jobs at the front-end: one event-service job fetched once from the server and shared by several
workers, each fetching its own event ranges (the server hands each range out once); the workers' final
updates are held until every share has ended, then merged into the one final update the server gets.

A share is handed out while the job is open: until it has ``max_shares`` shares, or until the first share
ends (its ranges are then likely gone). Share k > 1 gets its own output and log names (``<stem>_<k>.<ext>``)
and a new log GUID, so no two workers write the same file to the storage element. State is in Redis
(``relay:jumbo:<PandaID>`` hashes, ``relay:jumbo:open`` set), changed by one front-end under one lock.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus
from nodepilot.values import flag

OPEN = "relay:jumbo:open"
SHARE_MARK = "_jumboShare"  # in a share's definition: its number (other workers hold ranges of the job too)
FINAL_STATES = ("finished", "failed")
SUMMED = ("nEvents", "cpuConsumptionTime", "coreCount", "nInputFiles", "totRBYTES", "totWBYTES",
          "totRCHAR", "totWCHAR")
MAXED = ("maxRSS", "maxPSS", "maxVMEM", "maxSWAP")


def jumbo_key(job_id: int) -> str:
    return f"relay:jumbo:{job_id}"


def is_event_service(raw: dict[str, Any]) -> bool:
    return flag(raw.get("eventService"))


def _renamed(lfn: str, share: int) -> str:
    stem, dot, rest = lfn.partition(".")
    return f"{stem}_{share}{dot}{rest}"


def share_definition(raw: dict[str, Any], share: int) -> dict[str, Any]:
    """The definition share ``share`` runs: the job's own for the first, renamed outputs for the others;
    each marked as a share (``SHARE_MARK``): other workers hold ranges of the same job."""
    definition = {**raw, SHARE_MARK: share}
    if share <= 1:
        return definition
    for key in ("outFiles", "logFile"):
        if isinstance(definition.get(key), str) and definition[key]:
            definition[key] = ",".join(_renamed(lfn.strip(), share) for lfn in definition[key].split(","))
    definition.pop("logGUID", None)  # the worker makes a new one
    return definition


def merge_finals(finals: list[dict[str, Any]]) -> dict[str, Any]:
    """One final update from the shares' finals: finished when any share finished (the errors then are the
    failed shares' own, their ranges reported already), counts summed, peaks maxed, the file reports joined."""
    finished = [f for f in finals if f.get("state") == "finished"]
    merged = dict((finished or finals)[0])
    for keys, combine in ((SUMMED, sum), (MAXED, max)):
        for key in keys:
            values = [v for f in finals if isinstance(v := f.get(key), int | float) and not isinstance(v, bool)]
            if values:
                merged[key] = combine(values)
    starts = [f["startTime"] for f in finals if isinstance(f.get("startTime"), str)]
    ends = [f["endTime"] for f in finals if isinstance(f.get("endTime"), str)]
    if starts:
        merged["startTime"] = min(starts)  # "YYYY-MM-DD HH:MM:SS" sorts as time
    if ends:
        merged["endTime"] = max(ends)
    report: dict[str, Any] = {}
    for f in finals:
        try:
            part = json.loads(f.get("xml") or "{}")
        except (TypeError, ValueError):
            continue
        if isinstance(part, dict):
            report.update(part)
    if report:
        merged["xml"] = json.dumps(report)
    return merged


class JumboJobs:
    def __init__(self, r: aioredis.Redis, max_shares: int) -> None:
        self.r, self.max_shares = r, max(1, max_shares)
        self._lock = asyncio.Lock()

    async def open(self, raw: dict[str, Any], worker: str) -> dict[str, Any]:
        """A job the server just gave ``worker``: shared from now on when it is an event-service job."""
        job_id = bus.job_id_of(raw.get("PandaID"))
        if self.max_shares < 2 or job_id is None or not is_event_service(raw):
            return raw
        async with self._lock:
            await self.r.hset(jumbo_key(job_id), mapping={
                "definition": json.dumps(raw), "max": self.max_shares, "shares": 1, "open": 1,
                "worker:1": worker, f"of:{worker}": 1})
            await self.r.sadd(OPEN, job_id)
        return share_definition(raw, 1)

    async def take_share(self, worker: str) -> dict[str, Any] | None:
        """A share of an open jumbo job this worker has none of yet, or None."""
        async with self._lock:
            for member in sorted(await self.r.smembers(OPEN)):
                key = jumbo_key(int(member))
                state = await self.r.hgetall(key)
                if state.get("open") != "1" or f"of:{worker}" in state:
                    continue
                share = int(state["shares"]) + 1
                await self.r.hset(key, mapping={"shares": share, f"worker:{share}": worker, f"of:{worker}": share})
                if share >= int(state["max"]):
                    await self._close(int(member))
                return share_definition(json.loads(state["definition"]), share)
        return None

    async def _close(self, job_id: int) -> None:
        await self.r.hset(jumbo_key(job_id), "open", 0)
        await self.r.srem(OPEN, job_id)

    async def workers(self, job_id: int) -> list[str]:
        """The workers sharing the job (none when it is not a jumbo job)."""
        state = await self.r.hgetall(jumbo_key(job_id))
        return [v for k, v in state.items() if k.startswith("worker:")]

    async def update(self, job_id: int, worker: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """What to forward for this share's update: itself (a heartbeat, or not a share of a jumbo job),
        nothing (a final held for the other shares) or the merged final (the last share ended)."""
        if fields.get("state") not in FINAL_STATES:
            return fields
        async with self._lock:
            key = jumbo_key(job_id)
            state = await self.r.hgetall(key)
            share = state.get(f"of:{worker}")
            if share is None:  # not a share we know: forward as it is
                return fields
            await self.r.hset(key, f"final:{share}", json.dumps(fields))
            await self._close(job_id)
            state = await self.r.hgetall(key)
            finals = [state.get(f"final:{k}") for k in range(1, int(state["shares"]) + 1)]
            if any(f is None for f in finals) or state.get("merged") == "1":
                return None
            await self.r.hset(key, "merged", 1)
            return merge_finals([json.loads(f) for f in finals if f is not None])
