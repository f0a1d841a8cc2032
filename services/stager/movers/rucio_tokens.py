"""Where a pilot keeps its Rucio auth token between stager instances: the pilot's own Redis.

The stager runs only while a stage step needs it (nodepilot/demand.py), so each instance would
otherwise ask Rucio for a token at each stage step of each job. The token is kept in
``stager:rucio:token:<id>`` (``<id>``: a hash of the auth host, account and identity it was made for)
until shortly before Rucio says it expires; an instance takes it from there, and a 401 still fetches a
new one (which replaces it). The pilot's Redis is its own (a password in a 0600 file, a 0700 Unix
socket, its append-only file in the run dir, all removed with the run dir): the token never reaches a
log line, a command line or a file left behind. Redis unreachable: the client fetches its own token, as
without a store.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "stager:rucio:token:"
MARGIN_S = 60  # a kept token is dropped this long before Rucio's expiry: no call starts with a dying one
DEFAULT_LIFETIME_S = 600  # kept this long when Rucio gives no expiry (a 401 fetches a new one anyway)


class TokenStore(Protocol):
    async def get(self) -> str:
        """The kept token, "" when none."""

    async def put(self, token: str, expires: str) -> None:
        """Keep ``token``; ``expires``: Rucio's ``X-Rucio-Auth-Token-Expires`` ("" when not given)."""


def seconds_left(expires: str, now: datetime | None = None) -> float:
    """Seconds until Rucio's expiry date (RFC 1123, e.g. ``Tue, 08 Dec 2026 04:21:00 UTC``);
    ``DEFAULT_LIFETIME_S + MARGIN_S`` when absent or unreadable."""
    try:
        when = parsedate_to_datetime(expires)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_LIFETIME_S + MARGIN_S
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()


def key_for(identity: str) -> str:
    """The Redis key of the token for one Rucio identity (``RucioConfig.identity``), hashed: the key
    names no account or user."""
    return KEY_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:16]


class RedisTokens:
    """A token kept in the pilot's Redis for one Rucio identity, with its expiry as the key's TTL."""

    def __init__(self, r: aioredis.Redis, identity: str) -> None:
        self.r = r
        self.key = key_for(identity)

    async def get(self) -> str:
        try:
            token = await self.r.get(self.key)
        except RedisError as exc:
            log.info("Rucio token not read from the pilot's Redis (%s): asking Rucio", exc.__class__.__name__)
            return ""
        return token.decode() if isinstance(token, bytes) else (token or "")

    async def put(self, token: str, expires: str) -> None:
        ttl = int(seconds_left(expires) - MARGIN_S)
        if ttl <= 0:
            return
        try:
            await self.r.set(self.key, token, ex=ttl)
        except RedisError as exc:
            log.info("Rucio token not kept in the pilot's Redis (%s)", exc.__class__.__name__)
