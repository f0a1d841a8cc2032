"""The resource ledger of a multi-slot pilot: what a job needs, what the node has, waiting for room."""

from __future__ import annotations

import asyncio

import pytest

from nodepilot.job import parse_job
from nodepilot.slots import MAX_SLOTS, Resources, SlotLedger, job_needs, node_capacity, parse_slots
from tests.waiting import wait_until_async


def run(coro, timeout: float = 5.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def job(panda_id: int, **fields) -> object:
    return parse_job({"PandaID": panda_id, "attemptNr": 1, "transformation": "true", **fields})


def test_needs_of_a_job():
    assert job_needs(job(1, coreCount=8, minRamCount=16000, maxDiskCount=5000)) == Resources(8, 16000, 5000, 0)
    assert job_needs(job(2)) == Resources(1, 0, 0, 0)
    assert job_needs(job(3, resource_type="SCORE_GPU")).gpus == 1


def test_slots_option():
    assert parse_slots("auto") == 0 and parse_slots("4") == 4
    for bad in ("0", "-1", "two", "", str(MAX_SLOTS + 1)):
        with pytest.raises(ValueError):
            parse_slots(bad)


def test_capacity_of_the_node(tmp_path, monkeypatch):
    capacity, max_jobs = node_capacity("3", str(tmp_path))
    assert (capacity.cores, max_jobs) == (3, 3) and capacity.mem_mb > 0 and capacity.disk_mb > 0
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "5")
    capacity, max_jobs = node_capacity("auto", str(tmp_path), gpus=2)
    assert (capacity.cores, capacity.gpus, max_jobs) == (5, 2, 5)


def test_jobs_wait_for_room_and_a_release_wakes_them():
    async def scenario() -> list[str]:
        ledger = SlotLedger(Resources(cores=2, mem_mb=1000, disk_mb=1000), max_jobs=2)
        seen: list[str] = []
        a = await ledger.take(Resources(1, 400, 0), lambda: False)
        b = await ledger.take(Resources(1, 400, 0), lambda: False)
        assert not ledger.room_for_a_job()
        assert ledger.acquire_params("")["mem"] == 200

        looks: list[int] = []  # each time the waiter looked whether there is room

        async def big() -> None:
            token = await ledger.take(Resources(2, 100, 0), lambda: looks.append(1) or False)
            seen.append("big started")
            await ledger.release(token)

        waiter = asyncio.create_task(big())
        await wait_until_async(lambda: len(looks) >= 1, 5, "the waiter parked")
        assert not seen  # two cores are not free
        await ledger.release(a)
        assert ledger.acquire_params("") == {"mem": 600, "diskSpace": 1000, "resourceType": "SCORE"}
        await wait_until_async(lambda: len(looks) >= 2, 5, "the waiter woken by the release")
        assert not seen  # one core is not enough
        await ledger.release(b)
        await waiter
        assert ledger.free == ledger.capacity
        return seen

    assert run(scenario()) == ["big started"]


def test_a_job_bigger_than_the_pilot_runs_alone():
    ledger = SlotLedger(Resources(cores=2, mem_mb=1000, disk_mb=100), max_jobs=2)
    assert ledger.fit(Resources(8, 5000, 50), "job 1") == Resources(2, 1000, 50)


def test_a_stop_ends_the_wait():
    async def scenario() -> int | None:
        ledger = SlotLedger(Resources(cores=1, mem_mb=10, disk_mb=10), max_jobs=1)
        await ledger.take(Resources(1, 0, 0), lambda: False)
        stop = False
        looks: list[str] = []

        def stopped(who: str) -> bool:
            looks.append(who)
            return stop

        waiter = asyncio.create_task(ledger.take(Resources(1, 0, 0), lambda: stopped("take")))
        room = asyncio.create_task(ledger.wait_for_room(lambda: stopped("room")))
        await wait_until_async(lambda: {"take", "room"} <= set(looks), 5, "both waiting")
        stop = True
        await ledger.wake()
        await room
        return await waiter

    assert run(scenario()) is None
