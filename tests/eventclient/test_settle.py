"""Nothing counts as reported that the source does not hold: answers per range, look-ups after an
unknown outcome, bounded re-sends (a real Redis; a source that behaves as the real server does)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nodepilot import bus
from services.eventclient.ranges import RangeStore
from services.eventclient.reporter import SEND_BUDGET, Reporter
from services.eventclient.settle import Verdict, answered, range_ids, verdict
from tests.eventclient.helpers import make_ranges


class ServerLike:
    """Holds range statuses as a PanDA server does. ``mode`` per call, in order: "ok" (applied, answered
    true), "refuse" (not applied, answered false), "commit_500" (applied, then the call fails: 1.0.4),
    "down" (not applied, the call fails); after the list, "ok". ``lookups``: False makes look-ups fail."""

    def __init__(self, modes: list[str], lookups: bool = True) -> None:
        self.modes, self.lookups = list(modes), lookups
        self.held: dict[str, str] = {}
        self.calls: list[tuple[int, list[str]]] = []
        self.payloads: list[list[dict[str, Any]]] = []

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        return []

    async def report(self, payload: list[dict[str, Any]], version: int) -> list[Any] | None:
        ids = range_ids(payload, version)
        self.calls.append((version, ids))
        self.payloads.append(payload)
        mode = self.modes.pop(0) if self.modes else "ok"
        if mode in ("ok", "commit_500"):
            for record in payload:
                for r in record.get("eventRanges", [record]):
                    self.held[r["eventRangeID"]] = r["eventStatus"]
        if mode in ("commit_500", "down"):
            raise ConnectionError(f"HTTP 500 ({mode})")
        return [mode == "ok"] * len(ids)

    async def statuses(self, ids: list[str]) -> dict[str, dict[str, Any]] | None:
        if not self.lookups:
            raise ConnectionError("statuses unavailable")
        return {rid: {"status": self.held.get(rid, "sent")} for rid in ids}

    async def aclose(self) -> None:
        return None


def run_reports(redis_url: str, tmp_path: Any, source: ServerLike, n: int = 3,
                final: bool = True) -> tuple[RangeStore, bool]:
    ranges = make_ranges(tmp_path / "r.json", 9, n)

    async def scenario() -> tuple[RangeStore, bool]:
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        await store.reset()
        records = store.add(ranges)
        async with store.lock:
            for rec in records:
                store.set_state(rec, "staged", output=f"out_{rec.seq}", file={"fsize": 5, "checksum": "ad:0000abcd"})
            await store.save(*records)
        reporter = Reporter(store, source, batch=10, interval_s=0.05, objstore_id=42)
        ok = await (reporter.flush_final() if final else reporter.flush())
        await r.aclose()
        return store, ok

    return asyncio.run(scenario())


def test_records_name_the_objstore_id_and_answers_are_per_range(redis_url, tmp_path):
    source = ServerLike(["ok"])
    store, ok = run_reports(redis_url, tmp_path, source)
    assert ok and all(rec.sent and not rec.refused for rec in store.records.values())
    assert len(source.calls) == 1  # one report, no re-send
    for record in source.payloads[0]:
        assert record["zipFile"]["objstoreID"] == 42
        assert all(r["objstoreID"] == 42 for r in record["eventRanges"])


def test_an_update_applied_then_answered_500_is_looked_up_not_sent_again(redis_url, tmp_path):
    source = ServerLike(["commit_500"])
    store, ok = run_reports(redis_url, tmp_path, source)
    assert ok and all(rec.sent for rec in store.records.values())
    assert len(source.calls) == 1  # the look-up showed it applied: nothing re-sent


def test_only_what_the_server_does_not_hold_is_sent_again(redis_url, tmp_path):
    class PartlyRefusing(ServerLike):
        async def report(self, payload, version):  # the second range of the first call is refused
            returns = await super().report(payload, version)
            if len(self.calls) == 1 and returns:
                second = range_ids(payload, version)[1]
                del self.held[second]
                returns[1] = False
            return returns

    source = PartlyRefusing([])
    store, ok = run_reports(redis_url, tmp_path, source)
    assert ok and all(rec.sent for rec in store.records.values())
    first, again = source.calls
    assert len(first[1]) == 3 and again[1] == [first[1][1]]


def test_a_range_never_taken_is_given_up_after_the_budget_and_never_counted(redis_url, tmp_path):
    source = ServerLike(["refuse"] * 10)
    store, ok = run_reports(redis_url, tmp_path, source, n=2)
    assert ok  # nothing left to send: each range settled, as refused
    assert all(rec.refused and not rec.sent for rec in store.records.values())
    assert len(source.calls) == SEND_BUDGET  # bounded


def test_a_server_away_consumes_no_budget(redis_url, tmp_path):
    source = ServerLike(["down"] * 5, lookups=False)
    store, ok = run_reports(redis_url, tmp_path, source, final=False)
    assert not ok and store.count("staged") == 3  # back for the next batch
    assert all(rec.sends == 0 and not rec.refused for rec in store.records.values())


@pytest.mark.parametrize(("reported", "held", "expected"), [
    ("finished", "finished", Verdict.HELD), ("finished", "done", Verdict.HELD), ("finished", "merged", Verdict.HELD),
    ("finished", "sent", Verdict.MISSING), ("finished", "running", Verdict.MISSING),
    ("finished", "failed", Verdict.REFUSED), ("finished", "cancelled", Verdict.REFUSED),
    ("finished", None, Verdict.REFUSED),
    ("failed", "failed", Verdict.HELD), ("failed", "ready", Verdict.HELD), ("failed", "sent", Verdict.MISSING),
])
def test_verdicts(reported: str, held: str | None, expected: Verdict):
    assert verdict(reported, None if held is None else {"status": held}) is expected


def test_answers_pair_with_flattened_ranges():
    payload = [{"zipFile": {}, "eventRanges": [{"eventRangeID": "a"}, {"eventRangeID": "b"}]},
               {"zipFile": {}, "eventRanges": [{"eventRangeID": "c"}]}]
    ids = range_ids(payload, 1)
    assert ids == ["a", "b", "c"]
    assert answered(ids, [True, None, False]) == {"a": True, "b": False, "c": False}
    assert answered(ids, [True]) == dict.fromkeys(ids, False)  # cannot be paired: look every one up
    assert answered(ids, None) == dict.fromkeys(ids)


@pytest.mark.parametrize("shared", [False, True])
def test_ranges_handed_out_but_never_received_are_failed_unless_the_job_is_shared(redis_url, tmp_path, shared):
    """A range the server handed out in an answer that never arrived is failed at the end (1224); in a share of
    a jumbo job, the job's ranges this eventclient does not hold are the other shares' and are left alone."""
    class HandedOut(ServerLike):
        async def handed_out(self) -> list[str]:
            return ["77-9-1-99-1"]  # held by the server as handed out, unknown to this eventclient

    source = HandedOut([])

    async def scenario() -> None:
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        await store.reset()
        await Reporter(store, source, batch=10, interval_s=0.05, objstore_id=42, shared=shared).flush_final()
        await r.aclose()

    asyncio.run(scenario())
    failed = [ids for version, ids in source.calls if version == 0]
    assert failed == ([] if shared else [["77-9-1-99-1"]])
