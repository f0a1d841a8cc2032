"""Endpoints that name a catalogue entry rather than a place (``rucio:///<RSE>``): the mover of
their scheme declares ``resolves_endpoints`` and turns them into real URLs before the copy
(``prepare``) and records the result after it (``finish``); it may start work for a whole request when
the request arrives (``begin``). One instance per scheme per stager, made
with the queue data and the pilot's Redis (e.g. where the ``rucio`` mover keeps its auth token for the
pilot's next stagers). Work on ordinary endpoints passes through untouched."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from nodepilot.job import FileSpec
from nodepilot.queue.model import Endpoint, QueueData
from services.stager.attempts import FileWork
from services.stager.movers.base import mover_classes
from services.stager.request import FileResult, Request

log = logging.getLogger(__name__)


class Catalogues:
    def __init__(self, queue: QueueData, redis: aioredis.Redis | None = None) -> None:
        self.queue, self.redis = queue, redis
        self._movers: dict[str, Any] = {}

    def _resolver(self, scheme: str) -> Any:
        if scheme not in self._movers:
            cls = mover_classes().get(scheme)
            resolves = getattr(cls, "resolves_endpoints", False)
            self._movers[scheme] = cls(self.queue, redis=self.redis) if resolves else None
        return self._movers[scheme]

    def _for(self, endpoints: list[Endpoint]) -> Any:
        schemes = {urlsplit(e.url).scheme.lower() for e in endpoints}
        return self._resolver(schemes.pop()) if len(schemes) == 1 else None

    def begin(self, request: Request) -> None:
        """A request has arrived: the catalogue of its endpoints may start what serves all its files at
        once (the ``rucio`` mover: a stage-in's replica listing)."""
        resolver = self._for(request.endpoints)
        if resolver is not None and hasattr(resolver, "begin"):
            resolver.begin(request)

    async def ready(self, request: Request, spec: FileSpec) -> None:
        """Until the catalogue has what it needs to resolve the file (the ``rucio`` mover: the file's line
        of the request's listing): a file waits for it before it takes one of the request's copy slots,
        so that the files the catalogue answers first are copied first."""
        resolver = self._for(request.endpoints)
        if resolver is not None and hasattr(resolver, "ready"):
            await resolver.ready(request, spec)

    async def run(self, work: FileWork, move: Any) -> FileResult:
        """``move(work)`` (over the endpoints) with the catalogue's steps around it when there are any."""
        resolver = self._for(work.endpoints)
        if resolver is None:
            return await move(work)
        failed = await resolver.prepare(work)
        if failed is not None:
            return failed
        return await resolver.finish(work, await move(work))

    def _used(self) -> list[Any]:
        """The catalogues the queue uses (an endpoint of their scheme, or settings under their name in
        the queue's ``stager`` object), in that order."""
        schemes = [urlsplit(e.url).scheme.lower() for eps in self.queue.endpoints.values() for e in eps]
        schemes += [k for k in (self.queue.stager or {}) if isinstance(k, str)]
        resolvers = (self._resolver(scheme) for scheme in dict.fromkeys(schemes))
        return [r for r in resolvers if r is not None]

    def trace_url(self) -> str:
        """The trace URL of the first catalogue the queue uses that has one; "" when none has."""
        return next((str(r.trace_url()) for r in self._used() if r.trace_url()), "")

    async def warm(self) -> None:
        """When the stager starts: what the queue's catalogues can do before any request (the ``rucio``
        mover: its auth token)."""
        for resolver in self._used():
            if hasattr(resolver, "warm"):
                await resolver.warm()
