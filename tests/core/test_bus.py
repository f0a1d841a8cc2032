import asyncio

import pytest

from nodepilot import bus
from tests.waiting import wait_until_async


async def _consume_until(url: str, stream: str, want: int, handler_delay: float = 0.0) -> list[dict]:
    r = bus.connect(url)
    got: list[dict] = []
    done = asyncio.Event()

    async def handler(_entry_id: str, message: dict) -> None:
        await asyncio.sleep(handler_delay)
        got.append(message)
        if len(got) >= want:
            done.set()

    consumer = bus.Consumer(r, stream, "g", "c1", handler, block_ms=1000)
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(done.wait(), 10)
    await wait_until_async(lambda: consumer.handled >= want, 2, "entries acknowledged")  # counted once acked
    task.cancel()
    await asyncio.wait([task], timeout=2)
    await consumer.aclose()
    await r.aclose()
    return got


def test_consumer_handles_and_acknowledges(redis_url, rds):
    for i in range(5):
        rds.xadd("work", bus.encode({"n": i}))
    got = asyncio.run(_consume_until(redis_url, "work", 5))
    assert sorted(m["n"] for m in got) == list(range(5))
    assert rds.xpending("work", "g")["pending"] == 0


def test_pending_entries_are_redelivered_after_a_crash(redis_url, rds):
    rds.xgroup_create("work", "g", id="0", mkstream=True)
    rds.xadd("work", bus.encode({"n": 1}))
    rds.xreadgroup("g", "c1", {"work": ">"})  # read but never acknowledged: a crashed consumer
    got = asyncio.run(_consume_until(redis_url, "work", 1))
    assert got == [{"n": 1}]
    assert rds.xpending("work", "g")["pending"] == 0


def test_malformed_entries_do_not_stop_the_consumer(redis_url, rds):
    rds.xadd("work", {"data": "not json"})
    rds.xadd("work", bus.encode({"n": 2}))
    got = asyncio.run(_consume_until(redis_url, "work", 2))
    assert got[1] == {"n": 2} and "_malformed" in got[0]


@pytest.mark.parametrize("value", ['"a string"', "[1, 2]", "{"])
def test_decode_never_raises(value):
    assert "_malformed" in bus.decode({"data": value})


def test_a_long_handler_is_not_claimed_again(redis_url, rds):
    """An entry whose handler outlives claim_idle_ms stays with its consumer and runs once."""

    async def scenario() -> int:
        r = bus.connect(redis_url)
        calls = 0
        release = asyncio.Event()

        async def handler(_entry_id: str, _message: dict) -> None:
            nonlocal calls
            calls += 1
            await release.wait()

        consumer = bus.Consumer(r, "work", "g", "c1", handler, block_ms=50, claim_idle_ms=100)
        task = asyncio.create_task(consumer.run())
        await r.xadd("work", bus.encode({"n": 1}))
        await asyncio.sleep(0.6)  # not a synchronisation: the time of many claim cycles while the handler runs
        idle = (await r.xpending_range("work", "g", "-", "+", 10))[0]["time_since_delivered"]
        release.set()
        await wait_until_async(lambda: consumer.handled >= 1, 2, "the entry acknowledged")
        task.cancel()
        await asyncio.wait([task], timeout=2)
        await consumer.aclose()
        await r.aclose()
        assert idle < 400
        return calls

    assert asyncio.run(scenario()) == 1
