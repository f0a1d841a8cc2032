"""A fetch of ranges asked again with its request id gets the ranges it got the first time: the window
where the eventclient marked them running and died (or the connection broke) before the payload
had its answer. The store on a real Redis, then the real eventclient and stager as processes."""

from __future__ import annotations

import asyncio
import json

import httpx

from nodepilot import bus
from nodepilot.http import uds_client
from services.eventclient.ranges import RangeStore
from tests.conftest import running_service
from tests.eventclient.helpers import JOB, assert_reported_once, begin, end, ids, make_ranges, wait_event, workdir
from tests.eventclient.test_lines import ask


def test_a_fetch_id_is_saved_with_the_hand_out_and_dropped_when_the_range_stops_running(redis_url, tmp_path):
    async def scenario() -> None:
        r = bus.connect(redis_url)
        store = RangeStore(r, 9)
        await store.reset()
        first, second, third = store.add(make_ranges(tmp_path / "r.json", 9, 3))
        async with store.lock:
            for rec in (first, second):
                store.set_state(rec, "running", fetch="a")
            store.set_state(third, "running")
            await store.save(first, second, third)  # ... and the answer never reached the payload
        assert store.fetched("a") == [first, second] and store.fetched("") == []

        again = RangeStore(r, 9)  # a restarted eventclient: only what Redis holds
        await again.load()
        assert [rec.id for rec in again.fetched("a")] == [first.id, second.id]
        async with again.lock:
            rec = again.records[first.id]
            again.set_state(rec, "done", output="o")
            await again.save(rec)
        assert [rec.id for rec in again.fetched("a")] == [second.id] and rec.fetch == ""
        async with again.lock:
            rec = again.records[second.id]
            again.set_state(rec, "failed")
            await again.save(rec)
        assert again.fetched("a") == [] and again.fetches == {}  # nothing kept for a fetch that is over
        reloaded = RangeStore(r, 9)
        await reloaded.load()
        assert reloaded.fetches == {} and not any(rec.fetch for rec in reloaded.records.values())
        await again.reset()
        await r.aclose()

    asyncio.run(scenario())


def taken(api: httpx.Client, n: int, request: str | None = None) -> list[str]:
    params = {"n": n} | ({"request": request} if request is not None else {})
    reply = api.post("/ranges", params=params)
    assert reply.status_code == 200, reply.text
    return [r["eventRangeID"] for r in reply.json()["ranges"]]


def test_a_fetch_asked_again_gets_the_same_ranges_also_from_a_restarted_eventclient(
        rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config) as eventclient:
        sock = begin(rds, pilot_config, files)["socket"]
        first_ready = rds.xrevrange(f"job:{JOB}:events", count=1)[0][0]
        with uds_client(sock) as api:
            lost = taken(api, 2, "fetch-a")  # the answer the payload "never got"
            assert lost == sorted(ids(0, 1))
            assert taken(api, 2, "fetch-a") == lost  # asked again: the same ranges, none new
            assert taken(api, 7, "fetch-a") == lost  # whatever it asks for now
            assert taken(api, 1, "fetch-b") == sorted(ids(2))
            assert taken(api, 1) == sorted(ids(3)) and taken(api, 1) == sorted(ids(4))  # no id: as before
            assert api.post("/ranges", params={"n": 1, "request": "a b"}).status_code == 422
            assert api.post("/ranges", params={"n": 1, "request": "x" * 129}).status_code == 422
        eventclient.kill()  # SIGKILL: as if it died between marking the ranges running and answering
        eventclient.wait(10)
    with running_service("eventclient", pilot_config):
        wait_event(rds, JOB, "es_ready", f"{JOB}:0:es-start", after=first_ready)
        with uds_client(sock) as api:
            assert taken(api, 2, "fetch-a") == lost  # the predecessor's ids are honoured
            assert taken(api, 1, "fetch-b") == sorted(ids(2))
            (wd / "a.dat").write_bytes(b"a")
            done_next = {"output": "a.dat", "next": 1, "request": "fetch-c"}
            nxt = api.post(f"/ranges/{lost[0]}/done", json=done_next).json()["ranges"]
            again = api.post(f"/ranges/{lost[0]}/done", json=done_next).json()  # the done said twice too
            assert again["state"] in ("done", "staged") and again["ranges"] == nxt
            assert [r["eventRangeID"] for r in nxt] == sorted(ids(5))
            (wd / "b.dat").write_bytes(b"b")
            assert api.post(f"/ranges/{lost[1]}/done", json={"output": "b.dat"}).status_code == 200
            # none of fetch-a's ranges is running any more: the id is free, a new fetch with it is served
            assert taken(api, 1, "fetch-a") == sorted(ids(6))
        # the line protocol: next and range with a request id, each asked twice
        first, repeat = ask(wd, "next 2 line-1", "next - line-1")
        assert json.loads(first) == json.loads(repeat) and len(json.loads(first)) == 2
        one, same = ask(wd, "range line-2", "range line-2")
        assert one == same and one.split()[0] == f"77-{JOB}-1-9-1"
        assert ask(wd, "next 1 bad\x01id")[0].startswith("error 400 request")
        done = end(rds)
    finished = {lost[0], lost[1]}
    assert (done["finished"], done["failed"]) == (2, done["n_ranges"] - 2)
    assert_reported_once(files[1], finished, dict.fromkeys(ids(*range(done["n_ranges"])) - finished, 1224))
