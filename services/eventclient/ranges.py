"""The event ranges of one job and their life, kept in memory and written through to Redis.

Life of a range: ``ready`` (held, not handed out) -> ``running`` (handed to the payload) ->
``done`` (output given, upload in flight) | ``failed`` -> ``staged`` | ``stage_failed`` ->
``reported`` (``result``: finished | failed; ``sent`` once the source holds the status,
``refused`` when it did not take it within the reporter's budget). Every
change is saved before anything acts on it,
so a restarted eventclient rebuilds the same picture from ``eventclient:job:<id>:ranges``
(field = range id, value = the record as JSON). Job-level facts (the start request, the source
exhausted, softkill, the last job event read, the final summary) are in ``eventclient:job:<id>``.

A running range handed out by a payload's fetch that carried a request id keeps that id in its
record (``fetch``), written in the same save as its state: a fetch asked again with the same id (its
answer lost: the eventclient killed in between, a broken connection) gets the same ranges back
(``fetched``), also from a restarted eventclient. The id goes when the range stops running, so what
is kept is bounded by the ranges running, and ends with the job's keys.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    upload: str = ""  # the stageout request (its key) that carries the output
    zip: str = ""  # the zip the output went into (zipped batches), else ""
    file: dict[str, Any] | None = None  # the stager's report of the staged file (the output or its zip)
    result: str = ""  # finished | failed, once reported
    sent: bool = False  # the source took the report and holds the status (a restart sends the others again)
    sends: int = 0  # reports of this range the source answered without taking it (bounded: reporter.SEND_BUDGET)
    refused: bool = False  # given up: the source did not take the report within the budget
    before_report: str = ""  # the state to go back to when a report could not be sent
    unprocessed: bool = False  # still held when the job ended: failed without the payload's word
    fetch: str = ""  # while running: the request id of the payload's fetch that got it ("" if none was given)
    changed: float = field(default_factory=time.time)

    @property
    def staged_as(self) -> str:
        """The file the output was staged in: its zip, or itself."""
        return self.zip or self.output

    @property
    def num_events(self) -> int:
        try:
            return int(self.range["lastEvent"]) - int(self.range["startEvent"]) + 1
        except (KeyError, TypeError, ValueError):
            return int(self.n_events or 0)

    def to_json(self) -> str:
        return json.dumps(vars(self), separators=(",", ":"))  # (asdict would copy every nested dict first)

    @classmethod
    def from_json(cls, text: str) -> RangeRecord:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class RangeStore:
    """One job's ranges. Mutate through ``set_state`` and persist with ``save``; waiters wake on ``notify``.

    Records are indexed by state (insertion-ordered) and by output, so that serving a range, an
    answer or a report costs the same whether the job has ten ranges or ten thousand."""

    def __init__(self, r: aioredis.Redis, job_id: int) -> None:
        self.r, self.job_id = r, job_id
        self.records: dict[str, RangeRecord] = {}
        self.by_state: dict[str, dict[str, RangeRecord]] = {state: {} for state in STATES}
        self.outputs: dict[str, RangeRecord] = {}
        self.fetches: dict[str, dict[str, RangeRecord]] = {}  # request id -> its ranges still running
        self.lock = asyncio.Lock()  # held across every read-modify-save of records
        self._waiters: set[asyncio.Future[None]] = set()

    # --- persistence -------------------------------------------------------------------
    async def load(self) -> None:
        raw = await self.r.hgetall(ranges_key(self.job_id))
        self._index(sorted((RangeRecord.from_json(text) for text in raw.values()), key=lambda rec: rec.seq))

    def _index(self, records: list[RangeRecord]) -> None:
        self.records = {rec.id: rec for rec in records}
        self.by_state = {state: {} for state in STATES}
        self.outputs = {rec.output: rec for rec in records if rec.output}
        self.fetches = {}
        for rec in records:
            self.by_state[rec.state][rec.id] = rec
            if rec.fetch and rec.state == "running":
                self.fetches.setdefault(rec.fetch, {})[rec.id] = rec

    async def save(self, *records: RangeRecord, meta: dict[str, str] | None = None) -> None:
        """Write the records (and job-level ``meta`` fields) through, in one round trip."""
        if not records and not meta:
            return
        async with self.r.pipeline(transaction=True) as pipe:
            for key, mapping in ((ranges_key(self.job_id), {rec.id: rec.to_json() for rec in records}),
                                 (meta_key(self.job_id), meta)):
                if mapping:
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, STATE_TTL_S)
            await pipe.execute()
        self.notify()

    async def get_meta(self) -> dict[str, str]:
        return await self.r.hgetall(meta_key(self.job_id))

    async def set_meta(self, **fields: str) -> None:
        await self.save(meta=fields)

    async def reset(self) -> None:
        """Forget a previous run of this job id (a new start request for it)."""
        await self.r.delete(ranges_key(self.job_id), meta_key(self.job_id))
        self._index([])

    # --- records -------------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        return {state: len(records) for state, records in self.by_state.items()}

    def add(self, ranges: list[dict[str, Any]]) -> list[RangeRecord]:
        """Records for the ranges not seen before (a source may repeat itself)."""
        new = []
        for item in ranges:
            rid = str(item.get("eventRangeID") or "")
            if not rid or rid in self.records:
                continue
            rec = RangeRecord(rid, dict(item), seq=len(self.records))
            self.records[rid] = rec
            self.by_state[rec.state][rid] = rec
            new.append(rec)
        return new

    def set_state(self, rec: RangeRecord, state: str, **fields: Any) -> RangeRecord:
        assert state in STATES, state
        del self.by_state[rec.state][rec.id]
        self.by_state[state][rec.id] = rec
        if rec.fetch:  # it leaves its fetch: a fetch asked again gets only its ranges still running
            self._leave_fetch(rec)
        rec.state, rec.changed = state, time.time()
        for name, value in fields.items():
            setattr(rec, name, value)
        if rec.output:
            self.outputs[rec.output] = rec
        if rec.fetch and state == "running":  # handed out by a fetch that carried a request id
            self.fetches.setdefault(rec.fetch, {})[rec.id] = rec
        return rec

    def _leave_fetch(self, rec: RangeRecord) -> None:
        ranges = self.fetches.get(rec.fetch)
        if ranges is not None:
            ranges.pop(rec.id, None)
            if not ranges:
                del self.fetches[rec.fetch]
        rec.fetch = ""

    def fetched(self, request: str) -> list[RangeRecord]:
        """The ranges a payload's fetch with this request id got that are still running (none for "")."""
        ranges = self.fetches.get(request) if request else None
        return list(ranges.values()) if ranges else []

    def in_state(self, *states: str) -> list[RangeRecord]:
        """The records in these states, in order of arrival."""
        found = [rec for state in states for rec in self.by_state[state].values()]
        return sorted(found, key=lambda r: r.seq) if len(states) > 1 else found

    def first(self, state: str, n: int) -> list[RangeRecord]:
        """Up to ``n`` records in ``state``, the longest there first."""
        return list(itertools.islice(self.by_state[state].values(), n))

    def count(self, *states: str) -> int:
        return sum(len(self.by_state[s]) for s in states)

    def by_output(self, output: str) -> RangeRecord | None:
        return self.outputs.get(output)

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
