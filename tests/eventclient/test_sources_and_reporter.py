"""The range sources and the reporter on their own (a real Redis, a fake source)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nodepilot import bus
from nodepilot.errors import ErrorCode
from services.eventclient.ranges import RangeStore, ranges_key
from services.eventclient.reporter import Reporter, unsent
from services.eventclient.sources import FileRangeSource, ServerRangeSource
from tests.eventclient.helpers import make_ranges
from tests.waiting import wait_until_async


class FakeClient:
    def __init__(self, ranges: list[dict[str, Any]]) -> None:
        self.ranges, self.calls = ranges, []

    async def acquire_event_ranges(self, job_id, jobset_id, task_id, n_ranges):
        self.calls.append(("acquire", job_id, jobset_id, task_id, n_ranges))
        batch, self.ranges = self.ranges[:n_ranges], self.ranges[n_ranges:]
        return batch

    async def update_event_ranges(self, ranges, version=1):
        self.calls.append(("update", ranges, version))
        return {"Returns": [True] * len(ranges), "Commands": None}

    async def aclose(self):
        self.calls.append(("aclose",))


class RecordingSource:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[float, int, list[dict[str, Any]]]] = []
        self.fail_first = fail_first

    async def acquire(self, n: int) -> list[dict[str, Any]]:
        return []

    async def report(self, ranges: list[dict[str, Any]], version: int) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("server away")
        self.sent.append((time.monotonic(), version, ranges))

    async def aclose(self) -> None:
        return None


def test_server_source_calls_the_client_as_agreed(tmp_path):
    ranges = make_ranges(tmp_path / "r.json", 9, 5)
    client = FakeClient(ranges)
    source = ServerRangeSource(client, 9, 5, 77)

    async def scenario():
        assert await source.acquire(3) == ranges[:3]
        await source.report([{"eventRangeID": "x", "eventStatus": "failed", "errorCode": 1224}], 0)
        await source.aclose()

    asyncio.run(scenario())
    assert client.calls == [("acquire", 9, 5, 77, 3),
                            ("update", [{"eventRangeID": "x", "eventStatus": "failed", "errorCode": 1224}], 0),
                            ("aclose",)]


def test_file_source_hands_out_each_range_once_and_appends_reports(tmp_path):
    ranges = make_ranges(tmp_path / "r.json", 9, 5)
    source = FileRangeSource(tmp_path / "r.json", tmp_path / "out" / "reports.jsonl")

    async def scenario():
        got = [await source.acquire(2), await source.acquire(2), await source.acquire(2), await source.acquire(2)]
        await source.report([{"eventRangeID": "a"}], 1)
        await source.report([{"eventRangeID": "b"}], 0)
        return got

    got = asyncio.run(scenario())
    assert got == [ranges[:2], ranges[2:4], ranges[4:], []]
    lines = [json.loads(line) for line in (tmp_path / "out" / "reports.jsonl").read_text().splitlines()]
    assert [(x["version"], x["eventRanges"]) for x in lines] == [(1, [{"eventRangeID": "a"}]),
                                                                (0, [{"eventRangeID": "b"}])]


def test_reporter_batches_by_count_and_by_timer_and_retries(redis_url, rds, tmp_path):
    ranges = make_ranges(tmp_path / "r.json", 9, 20)
    source = RecordingSource(fail_first=1)

    async def scenario():
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        reporter = Reporter(store, source, batch=10, interval_s=0.3)
        task = asyncio.create_task(reporter.run())

        async def finish(recs, state, **fields):
            async with store.lock:
                for rec in recs:
                    store.set_state(rec, state, **fields)
                await store.save(*recs)

        records = store.add(ranges)
        await finish(records[:2], "failed", error_code=0)  # below the batch: waits for the timer
        await asyncio.sleep(0.1)  # not a synchronisation: a time shorter than the timer's, nothing may go
        assert source.sent == [] and source.fail_first == 1
        # the timer fired: the send failed, the ranges wait for the next try
        await wait_until_async(lambda: source.fail_first == 0 and store.count("failed") == 2, 5, "a failed try")
        assert source.sent == []
        assert await store.wait_for(lambda: store.count("reported") == 2, 5)  # the retry
        t0 = time.monotonic()
        await finish(records[2:12], "staged", output="o", file={"fsize": 5, "checksum": "ad:0000abcd"})
        assert await store.wait_for(lambda: store.count("reported") == 12, 5)
        t1 = time.monotonic()
        await finish(records[12:13], "stage_failed", error_code=ErrorCode.STAGEOUT_FAILED)
        assert await store.wait_for(lambda: store.count("reported") == 13, 5)
        task.cancel()
        stored = {k: json.loads(v)["state"] for k, v in (await r.hgetall(ranges_key(9))).items()}
        await r.aclose()
        return (t0, t1), stored

    (t0, t1), stored = asyncio.run(scenario())
    sent = {(version, json.dumps(item)) for _t, version, batch in source.sent for item in batch}
    assert len(sent) == sum(len(batch) for _t, _v, batch in source.sent)  # nothing twice
    zipped = [item for _t, v, batch in source.sent if v == 1 for item in batch]
    assert len(zipped) == 10 and zipped[0]["zipFile"] == {"lfn": "o", "fsize": 5, "adler32": "0000abcd",
                                                          "numEvents": 10}
    failed = {item["eventRangeID"]: item["errorCode"] for _t, v, batch in source.sent if v == 0 for item in batch}
    assert failed == {ranges[0]["eventRangeID"]: ErrorCode.ES_RECOVERABLE,
                      ranges[1]["eventRangeID"]: ErrorCode.ES_RECOVERABLE,
                      ranges[12]["eventRangeID"]: ErrorCode.STAGEOUT_FAILED}
    assert [len(batch) for _t, _v, batch in source.sent] == [2, 10, 1]
    assert source.sent[1][0] - t0 < 0.2  # a full batch goes at once
    assert source.sent[2][0] - t1 > 0.25  # a lone range waits for the timer
    assert sorted(stored.values()) == ["reported"] * 13  # (the ready ones were never saved here)


def test_reports_never_confirmed_are_sent_again_once_and_zips_go_as_one_record(redis_url, tmp_path):
    ranges = make_ranges(tmp_path / "r.json", 9, 4)
    zip_file = {"lfn": "z.zip", "fsize": 99, "checksum": "ad:0000beef", "status": "done"}

    async def instance(fail: bool) -> tuple[list[str], RecordingSource]:
        """An eventclient's life: load the job, put back what was not confirmed, report."""
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        await store.load()
        back = [rec.id for rec in unsent(store)]
        source = RecordingSource(fail_first=0)
        if fail:  # the report is marked and goes out, and the eventclient dies before it is confirmed
            source.report = lambda *_: asyncio.sleep(3600)  # type: ignore[method-assign]
        reporter = Reporter(store, source, batch=10, interval_s=0.1)
        if fail:
            flush = asyncio.create_task(reporter.flush())
            await store.wait_for(lambda: store.count("reported") == 4, 5)
            flush.cancel()
        else:
            assert await reporter.flush()
        await r.aclose()
        return back, source

    async def scenario():
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        records = store.add(ranges)
        async with store.lock:
            for rec in records[:3]:  # three outputs in one zip
                store.set_state(rec, "staged", output=f"o{rec.seq}", zip="z.zip", file=zip_file)
            store.set_state(records[3], "failed", error_code=ErrorCode.PAYLOAD_FAILED)
            await store.save(*records)
        await r.aclose()
        first = await instance(fail=True)
        second = await instance(fail=False)
        third = await instance(fail=False)
        return first, second, third

    (back1, _), (back2, source2), (back3, source3) = asyncio.run(scenario())
    assert back1 == [] and sorted(back2) == sorted(r["eventRangeID"] for r in ranges) and back3 == []
    assert source3.sent == []  # confirmed: never again
    (_, v1, zipped), (_, v0, failed) = source2.sent
    assert (v1, v0) == (1, 0)
    assert zipped == [{"zipFile": {"lfn": "z.zip", "fsize": 99, "adler32": "0000beef", "numEvents": 30},
                       "eventRanges": [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"}
                                       for r in ranges[:3]]}]
    assert failed == [{"eventRangeID": ranges[3]["eventRangeID"], "eventStatus": "failed",
                       "errorCode": ErrorCode.PAYLOAD_FAILED}]


def test_ranges_handed_out_in_an_answer_never_received_are_failed_at_the_end(redis_url, rds, tmp_path):
    """A killed eventclient never got the answer that handed out 9-lost: at the job's end it is failed
    as recoverable (1224), once; the ranges it knows are not touched."""
    ranges = make_ranges(tmp_path / "r.json", 9, 2)

    class Handing(RecordingSource):
        async def statuses(self, range_ids: list[str]) -> None:
            return None

        async def handed_out(self) -> list[str]:
            return [ranges[0]["eventRangeID"], "9-lost"]

    source = Handing()

    async def scenario() -> bool:
        r = bus.connect(redis_url)
        try:
            store = RangeStore(r, 9)
            store.add(ranges)
            return await Reporter(store, source, batch=10, interval_s=0.1).flush_final()
        finally:
            await r.aclose()

    assert asyncio.run(scenario())
    assert [(v, batch) for _t, v, batch in source.sent] == [
        (0, [{"eventRangeID": "9-lost", "eventStatus": "failed", "errorCode": ErrorCode.ES_RECOVERABLE}])]
