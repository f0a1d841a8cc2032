"""The pilot's first line: what runs, for which queue and server, with which queue data and isolation."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from nodepilot import __version__
from nodepilot.config import PilotConfig


def without_secret(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs: a Redis URL carries its password)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"


def queuedata_sources(config: PilotConfig) -> str:
    named = [(label, value) for label, value in (
        ("file", config.queuedata_file), ("url", config.queuedata_url), ("dump", config.queuedata_dump),
        ("storage", config.storagedata_url), ("se-dir", config.se_dir)) if value]
    return ", ".join(f"{label} {without_secret(value)}" for label, value in named) or "built-in local queue"


def isolation_mode(config: PilotConfig) -> str:
    """As configured (the runner's preflight says what it found): the environment over the queue data."""
    return os.environ.get("NODEPILOT_ISOLATION") or str(config.queuedata.isolation.get("mode") or "auto")


def banner(config: PilotConfig, mode: str) -> str:
    if config.job_file:
        server = f"none (job file {config.job_file})"
    else:
        server = without_secret(config.server or config.relay_url or "-")
    return (f"nodepilot {__version__} ({mode}): queue {config.queue}, server {server} (api {config.api}), "
            f"queue data: {queuedata_sources(config)}, isolation {isolation_mode(config)}, "
            f"work dir {config.work_dir}, run dir {config.run_dir}")
