"""The event ranges of one job and their life, kept in memory and written through to Redis.

Life of a range: ``ready`` (held, not handed out) -> ``running`` (handed to the payload) ->
``done`` (output given, upload in flight) | ``failed`` -> ``staged`` | ``stage_failed`` ->
``reported`` (``result``: finished | failed). Every change is saved before anything acts on it,
so a restarted eventclient rebuilds the same picture from ``eventclient:job:<id>:ranges``
(field = range id, value = the record as JSON). Job-level facts (the start request, the source
exhausted, softkill, the last job event read, the final summary) are in ``eventclient:job:<id>``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus

STATES = ("ready", "running", "done", "failed", "staged", "stage_failed", "reported")
HELD = ("ready", "running")  # not processed by the payload
REPORTABLE = ("staged", "failed", "stage_failed")
STATE_TTL_S = 7 * 86400
SERVICE = "eventclient"


def ranges_key(job_id: int) -> str:
    return f"{bus.service_state_key(SERVICE, job_id)}:ranges"


def meta_key(job_id: int) -> str:
    return bus.service_state_key(SERVICE, job_id)


@dataclass
class RangeRecord:
    id: str
    range: dict[str, Any]  # as the source gave it
    seq: int  # order of arrival
    state: str = "ready"
    output: str = ""
    guid: str = ""
    cpu_s: float | None = None
    wall_s: float | None = None
    n_events: int | None = None  # as the payload said
    error_code: int = 0
    diag: str = ""
    file: dict[str, Any] | None = None  # the stager's report of the staged output
    result: str = ""  # finished | failed, once reported
    before_report: str = ""  # the state to go back to when a report could not be sent
    unprocessed: bool = False  # still held when the job ended: failed without the payload's word
    changed: float = field(default_factory=time.time)

    @property
    def num_events(self) -> int:
        try:
            return int(self.range["lastEvent"]) - int(self.range["startEvent"]) + 1
        except (KeyError, TypeError, ValueError):
            return int(self.n_events or 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RangeRecord:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class RangeStore:
    """One job's ranges. Mutate through ``set_state`` and persist with ``save``; waiters wake on ``notify``."""

    def __init__(self, r: aioredis.Redis, job_id: int) -> None:
        self.r, self.job_id = r, job_id
        self.records: dict[str, RangeRecord] = {}
        self.counts: Counter[str] = Counter()
        self.lock = asyncio.Lock()  # held across every read-modify-save of records
        self._waiters: set[asyncio.Future[None]] = set()

    # --- persistence -------------------------------------------------------------------
    async def load(self) -> None:
        raw = await self.r.hgetall(ranges_key(self.job_id))
        self.records = {rid: RangeRecord.from_json(text) for rid, text in raw.items()}
        self.counts = Counter(rec.state for rec in self.records.values())

    async def save(self, *records: RangeRecord) -> None:
        if not records:
            return
        key = ranges_key(self.job_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={rec.id: rec.to_json() for rec in records})
            pipe.expire(key, STATE_TTL_S)
            await pipe.execute()
        self.notify()

    async def get_meta(self) -> dict[str, str]:
        return await self.r.hgetall(meta_key(self.job_id))

    async def set_meta(self, **fields: str) -> None:
        key = meta_key(self.job_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, STATE_TTL_S)
            await pipe.execute()

    async def reset(self) -> None:
        """Forget a previous run of this job id (a new start request for it)."""
        await self.r.delete(ranges_key(self.job_id), meta_key(self.job_id))
        self.records.clear()
        self.counts.clear()

    # --- records -------------------------------------------------------------------------
    def add(self, ranges: list[dict[str, Any]]) -> list[RangeRecord]:
        """Records for the ranges not seen before (a source may repeat itself)."""
        new = []
        for item in ranges:
            rid = str(item.get("eventRangeID") or "")
            if not rid or rid in self.records:
                continue
            rec = RangeRecord(rid, dict(item), seq=len(self.records))
            self.records[rid] = rec
            self.counts[rec.state] += 1
            new.append(rec)
        return new

    def set_state(self, rec: RangeRecord, state: str, **fields: Any) -> RangeRecord:
        assert state in STATES, state
        self.counts[rec.state] -= 1
        self.counts[state] += 1
        rec.state, rec.changed = state, time.time()
        for name, value in fields.items():
            setattr(rec, name, value)
        return rec

    def in_state(self, *states: str) -> list[RangeRecord]:
        return sorted((r for r in self.records.values() if r.state in states), key=lambda r: r.seq)

    def count(self, *states: str) -> int:
        return sum(self.counts[s] for s in states)

    def by_output(self, output: str) -> RangeRecord | None:
        return next((r for r in self.records.values() if r.output == output), None)

    # --- waiting -------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake every ``wait_for`` to look at its predicate again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Until ``predicate`` holds (re-checked on every change); False on time-out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not predicate():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait([waiter], timeout=remaining)
            finally:
                self._waiters.discard(waiter)
        return True
