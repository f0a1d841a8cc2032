"""Where queue definitions and DDM endpoints are read from, in the reference pilot's order.

A source is a local JSON file, a URL (http, https or file) whose download is cached with an age limit
and tried a bounded number of times, or a CRIC dump keyed by name. The first source of a kind that gives
a usable document wins; a source that fails is said once, in one line, and the next is tried. Nothing
here interprets the documents (``cric.py`` does).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from nodepilot.queue.model import QueueConfigError

log = logging.getLogger(__name__)

CACHE_MAX_AGE_S = 3 * 3600.0  # a download younger than this is used without asking again
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_TIMEOUT_S = 20.0
RETRY_PAUSE_S = 1.0  # doubles per retry


@dataclass(frozen=True)
class Source:
    """One place a document may come from: ``kind`` is file, url or dump (keyed by ``key``)."""

    kind: str
    where: str
    key: str = ""  # dump: the entry wanted
    cache: Path | None = None  # url: where the download is kept

    def __str__(self) -> str:
        return f"{self.where} [{self.key}]" if self.kind == "dump" else self.where


class SourceFailed(Exception):
    """This source gave nothing usable (the next one is tried)."""


def read_json_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceFailed(f"cannot read it: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueueConfigError(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def fetch_url(url: str, cache: Path | None, max_age_s: float = CACHE_MAX_AGE_S,
              attempts: int = DOWNLOAD_ATTEMPTS, pause: Callable[[float], None] = time.sleep) -> Any:
    """The JSON document at ``url``: from the cache while it is young enough, else downloaded (and cached);
    a download that fails after ``attempts`` falls back to an older cache copy, else SourceFailed."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return read_json_file(Path(unquote(parts.path)))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise QueueConfigError(f"{url}: not an http(s) or file URL")
    if cache is not None and cache.is_file() and time.time() - cache.stat().st_mtime < max_age_s:
        return read_json_file(cache)
    import httpx  # only a download needs it

    error = ""
    delay = RETRY_PAUSE_S
    for attempt in range(1, attempts + 1):
        try:
            reply = httpx.get(url, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
            reply.raise_for_status()
            data = reply.json()
            if cache is not None:
                _keep(cache, reply.text)
            return data
        except (httpx.HTTPError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            if attempt < attempts:
                pause(delay)
                delay *= 2
    if cache is not None and cache.is_file():
        log.warning("%s: download failed %d times (%s): using the cached copy of %s", url, attempts, error,
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(cache.stat().st_mtime)))
        return read_json_file(cache)
    raise SourceFailed(f"download failed {attempts} times: {error}")


def _keep(cache: Path, text: str) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(cache)
    except OSError as exc:
        log.warning("cannot cache the download at %s: %s", cache, exc)


def load(source: Source, pause: Callable[[float], None] = time.sleep) -> Any:
    """The document of one source (for a dump, its entry), or SourceFailed / QueueConfigError."""
    if source.kind == "url" or source.cache is not None:  # a dump may be a URL too
        data = fetch_url(source.where, source.cache, pause=pause)
    else:
        data = read_json_file(Path(source.where))
    if source.kind == "dump":
        if not isinstance(data, dict):
            raise QueueConfigError(f"{source.where}: expected an object keyed by name, got {type(data).__name__}")
        if source.key not in data:
            raise SourceFailed(f"no entry {source.key!r}")
        data = data[source.key]
    return data


def first_loaded(sources: list[Source], what: str, pause: Callable[[float], None] = time.sleep
                 ) -> tuple[Source, Any] | None:
    """The first source that gives a document: (source, document); each failure said once."""
    for source in sources:
        try:
            return source, load(source, pause)
        except SourceFailed as exc:
            log.warning("%s from %s: %s; trying the next source", what, source, exc)
    return None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for dicts (the reference pilot's merge rule)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
