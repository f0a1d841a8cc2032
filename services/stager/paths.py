"""Where files live on a storage endpoint (docs/queues.md), and which endpoint an output goes to first.
Pure functions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from nodepilot.queue.model import Endpoint


def deterministic_path(scope: str, lfn: str) -> str:
    """``<scope with dots as slashes>/<md5[0:2]>/<md5[2:4]>/<lfn>`` with md5 of ``scope:lfn``."""
    digest = hashlib.md5(f"{scope}:{lfn}".encode(), usedforsecurity=False).hexdigest()
    return f"{scope.replace('.', '/')}/{digest[0:2]}/{digest[2:4]}/{lfn}"


def log_se_path(job_id: int | str, lfn: str) -> str:
    """The secondary log SE's path: the job id in pairs of digits (an odd count leaves a short tail)."""
    digits = str(int(job_id))
    pairs = [digits[i:i + 2] for i in range(0, len(digits), 2)]
    return "/".join([*pairs, lfn])


def join_url(base_url: str, relative: str) -> str:
    """An endpoint URL with a relative path under it (the path is percent-encoded)."""
    return f"{base_url.rstrip('/')}/{quote(relative.lstrip('/'))}"


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///abs`` or ``file://localhost/abs``)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file URL: {url!r}")
    return Path(unquote(parts.path))


def order_for_job(endpoints: list[Endpoint], job_endpoint: str, known: Callable[[str], Endpoint | None]
                  ) -> list[Endpoint]:
    """An output's endpoints, as the reference pilot picks them: the job's ``ddmEndPointOut`` is kept as
    primary when the activity lists it (the next listed is the alternative); otherwise the activity's first
    endpoint is primary and the job's (when the queue knows where it is) the last alternative."""
    if not job_endpoint or not endpoints:
        return endpoints
    names = [e.name for e in endpoints]
    if job_endpoint in names:
        i = names.index(job_endpoint)
        return [endpoints[i], *endpoints[i + 1:], *endpoints[:i]]
    theirs = known(job_endpoint)
    return [*endpoints, theirs] if theirs is not None else endpoints
