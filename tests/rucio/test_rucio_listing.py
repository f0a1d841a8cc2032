"""How the ``rucio`` mover lists a request's inputs, against the real Rucio server: one streamed
``list_replicas`` call for the whole request, started when the request arrives, each file going on as
soon as its own line arrived; a call that breaks off makes each file it did not answer for ask for itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.rucio_server import SCOPE, RucioServer
from nodepilot.job import FileSpec
from nodepilot.queue.model import Endpoint, QueueData
from services.stager.attempts import FileWork
from services.stager.catalogue import Catalogues
from services.stager.movers.rucio import RucioMover, RucioSettings
from services.stager.movers.rucio_client import RucioError
from services.stager.paths import deterministic_path
from services.stager.request import Request
from tests.rucio.test_rucio_stager import LAN, name
from tests.stager.test_stager_service import adler32


def seeded(server: RucioServer, count: int) -> list[str]:
    """``count`` small files on the LAN RSE, registered in one go."""
    lfns = [name(f"listed{i}") for i in range(count)]
    replicas = []
    for lfn in lfns:
        data = lfn.encode() * 10
        server.xrootd.put(deterministic_path(SCOPE, lfn), data)
        replicas.append({"scope": SCOPE, "name": lfn, "bytes": len(data), "adler32": adler32(data)})
    server.tool("register", {"replicas": {LAN: replicas}})
    return lfns


def works(lfns: list[str], tmp_path: Path) -> list[FileWork]:
    endpoints = [Endpoint(LAN, f"rucio:///{LAN}")]
    request = Request("stagein", 601, "601:1:stagein", tmp_path, endpoints,
                      [FileSpec(lfn=lfn, scope=SCOPE) for lfn in lfns])
    return [FileWork(request, spec, None, list(endpoints), deterministic_path(SCOPE, spec.lfn))
            for spec in request.files]


class Spy:
    """The DIDs in each of the mover's ``list_replicas`` calls (a file's own call goes through the same
    stream); ``break_after`` ends the first answer with a RucioError after that many lines (an answer cut
    off half-way)."""

    def __init__(self, mover: RucioMover, break_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.last_line = 0.0  # when the first answer's last line came (its end may never be read)
        replicas = mover.client.replicas

        async def streamed(dids: list[tuple[str, str]], *args: Any) -> AsyncIterator[dict[str, Any]]:
            self.calls.append(len(dids))
            first = len(self.calls) == 1
            n = 0
            async for item in replicas(dids, *args):
                if first and n == break_after:
                    raise RucioError("list_replicas", message="RemoteProtocolError reading the answer")
                n += 1
                if first:
                    self.last_line = time.monotonic()
                yield item

        mover.client.replicas = streamed  # type: ignore[method-assign]


async def prepared(mover: RucioMover, todo: list[FileWork]) -> list[tuple[Any, float]]:
    async def one(work: FileWork) -> tuple[Any, float]:
        failed = await mover.prepare(work)
        return failed, time.monotonic()

    try:
        return list(await asyncio.gather(*(one(w) for w in todo)))
    finally:
        await mover.client.close()


def test_one_streamed_call_for_the_request_and_files_go_on_before_its_end(rucio_server, tmp_path):
    lfns = seeded(rucio_server, 30)
    mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    spy = Spy(mover)
    todo = works(lfns, tmp_path)
    results = asyncio.run(prepared(mover, todo))
    assert [failed for failed, _ in results] == [None] * len(lfns)
    assert spy.calls == [len(lfns)]
    assert min(done for _, done in results) < spy.last_line  # the first files did not wait for the last
    for work in todo:
        assert work.endpoints[0].name == LAN and work.endpoints[0].url.startswith("root://127.0.0.1:")
        assert work.relative == work.spec.lfn and work.size == len(work.spec.lfn.encode() * 10)


def test_the_listing_starts_when_the_request_arrives(rucio_server, tmp_path):
    lfns = seeded(rucio_server, 4)
    mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    spy = Spy(mover)
    todo = works(lfns, tmp_path)
    outgoing = Request("stageout", 602, "602:1:stageout", tmp_path, todo[0].request.endpoints,
                       [FileSpec(lfn=name("out"), scope=SCOPE)])

    async def arrived() -> tuple[list[int], list[tuple[Any, float]]]:
        mover.begin(outgoing)  # a stage-out lists nothing
        mover.begin(todo[0].request)
        await asyncio.sleep(0)  # the listing's task takes its first step
        before_any_file = list(spy.calls)
        return before_any_file, await prepared(mover, todo)

    before_any_file, results = asyncio.run(arrived())
    assert before_any_file == [len(lfns)]
    assert [failed for failed, _ in results] == [None] * len(lfns) and spy.calls == [len(lfns)]


def test_the_token_is_fetched_when_the_stager_starts(rucio_server, tmp_path, monkeypatch):
    """``Catalogues.warm`` (a stager worker from its start) gets the queue's Rucio token: the first request
    finds it; a token Rucio refuses is only noted there."""
    lfns = seeded(rucio_server, 2)
    monkeypatch.setenv("RUCIO_CONFIG", str(rucio_server.client_config))
    queue = QueueData.default("WARM", tmp_path)
    queue.endpoints = {"read_lan": [Endpoint(LAN, f"rucio:///{LAN}")]}
    catalogues = Catalogues(queue)
    mover = catalogues._resolver("rucio")
    asked: list[str] = []
    fetch = mover.client._auth

    async def counted() -> str:
        asked.append("token")
        return await fetch()

    mover.client._auth = counted

    async def started() -> list[str]:
        await catalogues.warm()
        at_start = list(asked)
        results = await prepared(mover, works(lfns, tmp_path))
        assert [failed for failed, _ in results] == [None] * len(lfns)
        return at_start

    assert asyncio.run(started()) == ["token"] and asked == ["token"]

    refused = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    refused.config.password = "not-the-password"

    async def refused_start() -> None:
        await refused.warm()
        await refused.client.close()

    asyncio.run(refused_start())  # no exception: the first call asks again and fails with its own diag


def test_a_request_is_not_listed_without_a_usable_configuration(tmp_path):
    mover = RucioMover(None, {})  # no Rucio host: each file fails in prepare with one line, nothing is asked
    spy = Spy(mover)

    async def arrived() -> None:
        mover.begin(works([name("any")], tmp_path)[0].request)
        await asyncio.sleep(0)
        await mover.client.close()

    asyncio.run(arrived())
    assert spy.calls == []


def test_the_server_caches_what_a_listing_looks_up(rucio_server, tmp_path):
    """The test server runs as production Rucio does, with memcached (Rucio goes on without a cache,
    silently, when it cannot reach one)."""
    # never skipped: `make test` installs memcached (scripts/system-deps.sh); without it this says so
    assert rucio_server.cache is not None, "no memcached here: scripts/system-deps.sh installs it"
    lfns = seeded(rucio_server, 2)
    mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    before = int(rucio_server.cache.stats()["get_hits"])
    asyncio.run(prepared(mover, works(lfns, tmp_path)))
    stats = rucio_server.cache.stats()
    assert int(stats["curr_items"]) > 0 and int(stats["get_hits"]) > before


def test_files_an_interrupted_listing_did_not_answer_ask_for_themselves(rucio_server, tmp_path):
    lfns = seeded(rucio_server, 6)
    unknown = name("unknown")
    mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    spy = Spy(mover, break_after=2)
    results = asyncio.run(prepared(mover, works([*lfns, unknown], tmp_path)))
    failed = [f for f, _ in results]
    assert failed[:-1] == [None] * len(lfns)
    assert failed[-1].error_code == 1100 and unknown in failed[-1].diag
    assert spy.calls == [len(lfns) + 1] + [1] * (len(lfns) + 1 - 2)  # each but the two answered before the break


def test_lan_replicas_alike_come_in_the_requests_order():
    """Rucio lists replicas in no particular order (no geoip sorting asked): LAN RSEs equal in scheme and
    priority keep the request's (the queue's) order; WAN ones come after every LAN one."""
    mover = RucioMover(None, {})
    mover.settings = RucioSettings(allow_wan=True)
    pfns = {f"root://{rse.lower()}.example:1094//data/f.dat": {"rse": rse, "type": "DISK", "priority": 1}
            for rse in ("FAR", "SECOND", "FIRST")}
    chosen, skipped = mover._choose({"pfns": pfns}, {"FIRST": 0, "SECOND": 1}, "f.dat")
    assert [e.name for e in chosen] == ["FIRST", "SECOND", "FAR"] and skipped == []
    assert chosen[0].url == "root://first.example:1094//data"
