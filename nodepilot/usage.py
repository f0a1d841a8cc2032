"""The payload-usage contract between the runner (which samples the payload's process tree) and
the monitor (whose watchdog checks and heartbeats read it): where the latest sample is kept and how
it reads back. The runner writes ``usage_key(job)`` (a hash of JSON values, with its summary so
far) and ``<workdir>/USAGE_FILE`` (the time series)."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from nodepilot import bus

USAGE_FILE = "memory_monitor_output.json"

usage_key = bus.runner_usage_key  # the hash holding the latest sample of a job's payload tree


def decode_usage(raw: dict[str, str]) -> dict[str, Any]:
    """The usage hash as the runner writes it: numbers as numbers, ``pids`` as a list."""
    usage: dict[str, Any] = {}
    for name, text in raw.items():
        try:
            usage[name] = json.loads(text)
        except ValueError:
            usage[name] = text
    return usage


async def read_usage(r: aioredis.Redis, job_id: int) -> dict[str, Any]:
    """The latest sample of a job's payload tree, with the summary so far ({} before the first)."""
    return decode_usage(await r.hgetall(usage_key(job_id)))
