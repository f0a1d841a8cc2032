"""Movers: one plug-in per storage protocol, found by URL scheme.

Plug-ins register under the entry-point group ``nodepilot.movers`` (``name = "module:Class"``)
and declare the URL schemes they serve. A mover raises ``TransferError`` with a ``reason``;
the stager turns the reason into a pilot error code, which depends on the direction.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeVar
from urllib.parse import urlsplit

from nodepilot.checksums import CHUNK, Adler32
from nodepilot.job import Checksum

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodepilot.movers"
BUILTIN_MOVERS = {"posix": "services.stager.movers.posix:PosixMover"}

Progress = Callable[[int], None]  # bytes done so far; called from the copying thread
T = TypeVar("T")


class Reason:
    MISSING = "missing"  # source file not there
    SIZE = "size"
    ADLER32 = "adler32"
    MD5 = "md5"
    TIMEOUT = "timeout"
    NOSPACE = "nospace"  # the destination's disk is full
    IO = "io"  # any other I/O failure
    PROTOCOL = "protocol"  # no mover for the URL's scheme


class TransferError(Exception):
    """``transient``: worth retrying on the same endpoint after a back-off (connection refused or
    reset, a time-out talking to the server, HTTP 5xx/429); anything else is final for that endpoint."""

    def __init__(self, reason: str, diag: str, transient: bool = False) -> None:
        super().__init__(diag)
        self.reason = reason
        self.diag = diag
        self.transient = transient


class Aborted(Exception):
    """Raised inside a copying thread when its transfer was abandoned (timeout, shutdown)."""


def io_error(exc: OSError, what: str) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(Reason.NOSPACE, f"no space left on device while {what}: {exc}")
    return TransferError(Reason.IO, f"{what} failed: {exc}")


class StreamSums:
    """adler32 (always) and md5 (when asked) of the bytes streaming by."""

    def __init__(self, md5: bool = False) -> None:
        self.size = 0
        self.adler32 = Adler32()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.adler32.update(chunk)
        if self.md5 is not None:
            self.md5.update(chunk)

    def verify(self, expected: Checksum | None, what: str) -> None:
        if expected is None:
            return
        if expected.algorithm == "md5":
            actual, reason = (self.md5.hexdigest() if self.md5 else ""), Reason.MD5
        else:
            actual, reason = self.adler32.hexdigest(), Reason.ADLER32
        if actual != expected.value:
            raise TransferError(reason, f"{expected.algorithm} mismatch for {what}: "
                                        f"expected {expected.value}, got {actual}")


def stream_copy(src: BinaryIO, dst: BinaryIO, sums: StreamSums, progress: Progress,
                cancel: threading.Event) -> None:
    """Copy in CHUNK pieces, summing as it goes; stops between chunks once ``cancel`` is set."""
    while True:
        if cancel.is_set():
            raise Aborted
        chunk = src.read(CHUNK)
        if not chunk:
            return
        dst.write(chunk)
        sums.update(chunk)
        progress(sums.size)


class Mover:
    """One storage protocol. Subclasses declare ``schemes`` and implement the two copies."""

    schemes: ClassVar[tuple[str, ...]] = ()
    timeout_base_s: float = 400.0
    timeout_per_mb_s: float = 1.0
    grace_s: float = 5.0  # after a timeout: time the thread gets to stop and clean up

    def timeout_for(self, size: int | None) -> float:
        return self.timeout_base_s + self.timeout_per_mb_s * (size or 0) / 1e6

    async def copy_in(self, src_url: str, dst_path: Path, expected: Checksum | None,
                      expected_size: int | None, progress: Progress) -> tuple[int, str]:
        """Copy a replica to a local file, verified; returns (size, adler32 hex)."""
        raise NotImplementedError

    async def copy_out(self, src_path: Path, dst_url: str, progress: Progress) -> tuple[int, str]:
        """Copy a local file to storage, verified there; returns (size, adler32 hex)."""
        raise NotImplementedError

    async def in_thread(self, work: Callable[[threading.Event], T], timeout: float, what: str) -> T:
        """Run blocking ``work(cancel)`` in a thread, bounded by ``timeout``.

        A thread cannot be killed: on timeout (or cancellation) ``cancel`` is set and the work is
        expected to stop at its next chunk and remove what it wrote.
        """
        cancel = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(work, cancel))
        task.add_done_callback(_consume_result)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            cancel.set()
            raise
        if not done:
            cancel.set()
            await asyncio.wait({task}, timeout=self.grace_s)
            raise TransferError(Reason.TIMEOUT, f"{what} timed out after {timeout:.0f} s")
        return task.result()


def _consume_result(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "never retrieved" warning for abandoned work


@functools.cache
def mover_classes() -> dict[str, type[Mover]]:
    """URL scheme -> mover class, from the entry points, then the built-ins not registered."""
    specs = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    classes: dict[str, type[Mover]] = {}
    for name in [*specs, *(n for n in BUILTIN_MOVERS if n not in specs)]:
        try:
            cls = specs[name].load() if name in specs else _load(BUILTIN_MOVERS[name])
        except Exception:
            log.exception("mover plug-in %s cannot be loaded", name)
            continue
        for scheme in cls.schemes:
            classes.setdefault(scheme.lower(), cls)
    return classes


def _load(spec: str) -> type[Mover]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def mover_for(url: str) -> Mover:
    scheme = urlsplit(url).scheme.lower()
    cls = mover_classes().get(scheme)
    if cls is None:
        raise TransferError(Reason.PROTOCOL, f"no mover for {scheme or 'a scheme-less'} URL {url}")
    return cls()
