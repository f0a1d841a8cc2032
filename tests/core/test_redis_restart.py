"""A Redis that dies and comes back: its append-only file keeps what it acknowledged, the clients of
bus.connect retry through the gap, and a consumer whose group vanished creates it again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from nodepilot import bus
from nodepilot.redis_server import start_redis
from tests.waiting import wait_until_async


@pytest.fixture
def aof_redis(tmp_path):
    server = start_redis(tmp_path / "r", appendonly=True)
    yield server
    server.stop()


def test_a_killed_redis_restarts_with_its_data_socket_and_password(aof_redis):
    r = redis.Redis.from_url(aof_redis.url, decode_responses=True)
    r.xadd("s", {"data": "1"})
    r.xgroup_create("s", "g", id="0")
    r.xreadgroup("g", "c", {"s": ">"})  # one entry pending at c
    r.close()
    aof_redis.process.kill()
    aof_redis.process.wait(5)
    url = aof_redis.url
    aof_redis.restart()
    aof_redis.wait_ready()
    assert aof_redis.url == url and aof_redis.restarts == 1
    r = redis.Redis.from_url(url, decode_responses=True)
    assert r.xlen("s") == 1 and r.xpending("s", "g")["pending"] == 1
    r.close()


def test_a_fresh_server_ignores_an_old_append_only_file(tmp_path):
    first = start_redis(tmp_path / "r", appendonly=True)
    redis.Redis.from_url(first.url).set("k", "old")
    first.stop()
    second = start_redis(tmp_path / "r", appendonly=True)
    try:
        assert redis.Redis.from_url(second.url).get("k") is None
    finally:
        second.stop()


def test_clients_retry_through_a_restart(aof_redis):
    async def main() -> list:
        r = bus.connect(aof_redis.url)
        await r.xadd("s", {"data": "before"})
        aof_redis.process.kill()
        aof_redis.process.wait(5)
        loop = asyncio.get_running_loop()

        def back() -> None:
            aof_redis.restart()
            aof_redis.wait_ready()

        t0 = time.monotonic()
        loop.call_later(0.5, lambda: loop.run_in_executor(None, back))
        await r.xadd("s", {"data": "during"})  # retried until the server is back
        waited = time.monotonic() - t0
        entries = await r.xrange("s")
        await r.aclose()
        return [waited, [e[1]["data"] for e in entries]]

    waited, data = asyncio.run(main())
    assert data == ["before", "during"] and waited >= 0.4


def test_a_consumer_creates_its_vanished_group_again(aof_redis):
    async def main() -> list[str]:
        r = bus.connect(aof_redis.url)
        seen: list[str] = []

        async def handler(_entry_id: str, message: dict) -> None:
            seen.append(message["n"])

        consumer = bus.Consumer(r, "work", "g", "c", handler, block_ms=100)
        task = asyncio.create_task(consumer.run())
        await bus.publish(r, "work", {"n": "1"})
        await wait_until_async(lambda: len(seen) >= 1, 10, "the first entry handled")
        await r.delete("work")  # what a Redis that lost its data looks like: no stream, no group
        await group_back(r, "work", "g")  # the consumer's next read found it gone and made it again
        await bus.publish(r, "work", {"n": "2"})
        await wait_until_async(lambda: len(seen) >= 2, 10, "the second entry handled")
        task.cancel()
        await consumer.aclose()
        await r.aclose()
        return seen

    assert asyncio.run(main()) == ["1", "2"]



async def group_back(r: redis.asyncio.Redis, stream: str, group: str) -> None:
    async def present() -> bool:
        try:
            return group in [g["name"] for g in await r.xinfo_groups(stream)]
        except redis.ResponseError:  # no such stream (yet)
            return False

    await wait_until_async(present, 10, f"group {group} of {stream} back")
