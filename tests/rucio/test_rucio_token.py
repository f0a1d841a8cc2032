"""The Rucio auth token kept in the pilot's Redis across stager instances (services/stager/movers/rucio_tokens.py),
against the real Rucio server and the real Redis: a second stager makes no auth call; a kept token Rucio
refuses is replaced; the key lives no longer than Rucio's token; the token reaches no log line."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from nodepilot import bus
from nodepilot.logs import LIBRARY_LEVELS
from services.stager.movers.rucio import RucioMover
from services.stager.movers.rucio_tokens import DEFAULT_LIFETIME_S, KEY_PREFIX, MARGIN_S, key_for, seconds_left
from tests.rucio.test_rucio_listing import prepared, seeded, works


def stager_instance(rucio_server, redis_url: str, lfns: list[str], tmp_path, asked: list[str]) -> None:
    """One stager's life, as far as Rucio goes: its start (``warm``), then a stage-in's listing; each
    auth call it makes is counted in ``asked``."""

    async def life() -> None:
        r = bus.connect(redis_url)
        mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)}, redis=r)
        fetch = mover.client._auth

        async def counted() -> tuple[str, str]:
            asked.append("token")
            return await fetch()

        mover.client._auth = counted  # type: ignore[method-assign]
        try:
            await mover.warm()
            results = await prepared(mover, works(lfns, tmp_path))
            assert [failed for failed, _ in results] == [None] * len(lfns)
        finally:
            await r.aclose()

    asyncio.run(life())


def test_a_second_stager_makes_no_auth_call(rucio_server, redis_url, rds, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # the pilot's most verbose logging
    for library, level in LIBRARY_LEVELS.items():
        caplog.set_level(level, logger=library)
    lfns = seeded(rucio_server, 2)
    asked: list[str] = []
    stager_instance(rucio_server, redis_url, lfns, tmp_path, asked)
    assert asked == ["token"]
    (key,) = rds.keys(f"{KEY_PREFIX}*")
    token = rds.get(key)
    assert token and 0 < rds.ttl(key) <= 3600 - MARGIN_S  # Rucio's tokens last an hour
    stager_instance(rucio_server, redis_url, lfns, tmp_path, asked)
    assert asked == ["token"] and rds.get(key) == token
    assert token not in caplog.text


def test_a_kept_token_rucio_refuses_is_replaced(rucio_server, redis_url, rds, tmp_path):
    lfns = seeded(rucio_server, 1)
    mover = RucioMover(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})
    key = key_for(mover.config.identity())
    rds.set(key, "revoked-or-expired", ex=600)
    asked: list[str] = []
    stager_instance(rucio_server, redis_url, lfns, tmp_path, asked)
    assert asked == ["token"]  # taken from Redis, refused (401), fetched once, kept instead
    assert rds.get(key) not in (None, "revoked-or-expired")


def test_rucios_expiry_date():
    now = datetime(2026, 12, 8, 3, 21, tzinfo=UTC)
    assert seconds_left("Tue, 08 Dec 2026 04:21:00 UTC", now) == 3600
    assert seconds_left("", now) == seconds_left("garbage", now) == DEFAULT_LIFETIME_S + MARGIN_S
