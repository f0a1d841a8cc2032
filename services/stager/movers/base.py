"""Movers: one plug-in per storage protocol, found by URL scheme.

Plug-ins register under the entry-point group ``nodepilot.movers`` (``name = "module:Class"``)
and declare the URL schemes they serve. A mover raises ``TransferError`` with a ``reason``;
the stager turns the reason into a pilot error code, which depends on the direction.

``StreamMover`` holds the transfer logic every protocol shares (docs/movers.md): local temporary
names, streamed size/adler32/md5 checks, upload under a temporary name then rename, verification of
the stored copy, clean-up, cancellation between chunks. A protocol only gives its primitives.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeVar
from urllib.parse import urlsplit

from nodepilot.checksums import CHUNK, Adler32
from nodepilot.deadlines import TRANSFER_GRACE_S, TRANSFER_TIMEOUT_BASE_S, TRANSFER_TIMEOUT_PER_MB_S
from nodepilot.job import Checksum
from nodepilot.plugins import load_all

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodepilot.movers"
BUILTIN_MOVERS = {"posix": "services.stager.movers.posix:PosixMover",
                  "rucio": "services.stager.movers.rucio:RucioMover"}  # the stager's rucio:// endpoints
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".nodepilot-", ".part"  # a file being written; never a final name

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


@dataclass
class RemoteStat:
    size: int
    adler32: str | None = None  # None: the storage cannot tell without reading the file


@dataclass
class Source:
    """An open replica: its size when the storage tells it, and its bytes in pieces.

    ``copy_into(fd)``, when given, copies the replica into the local file ``fd`` by itself (a local
    source: in the kernel) and yields each piece as read back from the local copy, so what is summed
    is what landed; used in place of ``chunks`` plus plain writes.
    """

    size: int | None
    chunks: Iterator[bytes]
    copy_into: Callable[[int], Iterator[bytes]] | None = None


def io_error(exc: OSError, what: str) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(Reason.NOSPACE, f"no space left on device while {what}: {exc}")
    return TransferError(Reason.IO, f"{what} failed: {exc}")


def partial_name() -> str:
    return f"{PARTIAL_PREFIX}{uuid.uuid4().hex}{PARTIAL_SUFFIX}"


def temp_url(url: str) -> str:
    """A sibling of ``url`` (same directory, so a rename is cheap) under a partial name."""
    head, _, _ = url.rpartition("/")
    return f"{head}/{partial_name()}"


def open_temp(directory: Path) -> tuple[Path, BinaryIO]:
    """A new file in ``directory`` under a name no reader takes for a finished file."""
    path = directory / partial_name()
    return path, open(path, "x+b")  # closed by the caller; readable: a local copy may be read back


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


def file_chunks(fh: BinaryIO, what: str, size: int = CHUNK, reuse: bool = False) -> Iterator[bytes]:
    """A local file's bytes in pieces; a read error is an ``io_error`` about ``what``.

    ``reuse``: read into one buffer again and again (a third less CPU than a new bytes object per
    chunk); each chunk is then a view valid only until the next is read, so only for a consumer that
    is done with a chunk when it asks for the next (a stage-in, a check) and never keeps them.
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        try:
            n = fh.readinto(buffer)
        except OSError as exc:
            raise io_error(exc, what) from None
        if not n:
            return
        yield view[:n] if reuse else bytes(view[:n])  # type: ignore[misc]


def summed(chunks: Iterator[bytes], sums: StreamSums, progress: Progress,
           cancel: threading.Event) -> Iterator[bytes]:
    """``chunks`` summed and reported as they go by; stops between chunks once ``cancel`` is set."""
    for chunk in chunks:
        sums.update(chunk)
        progress(sums.size)
        yield chunk
        if cancel.is_set():
            raise Aborted


def wants_md5(expected: Checksum | None) -> bool:
    return expected is not None and expected.algorithm == "md5"


def land(tmp: Path, dst: Path, sums: StreamSums, src_url: str, expected: Checksum | None,
         expected_size: int | None) -> None:
    """A local copy under a temporary name, checked (size, checksum), given its final name."""
    if expected_size is not None and sums.size != expected_size:
        raise TransferError(Reason.SIZE, f"size mismatch for {src_url}: expected {expected_size}, "
                                         f"copied {sums.size}")
    sums.verify(expected, src_url)
    try:
        os.replace(tmp, dst)
    except OSError as exc:
        raise io_error(exc, f"renaming to {dst}") from None


class Mover:
    """One storage protocol. Subclasses declare ``schemes`` and implement the two copies.

    Capabilities the stager looks at: ``can_query_checksum`` (``stat`` gives a stored file's
    adler32 without reading it), ``supports_direct_access`` (a payload can open the URL in place;
    ``stat`` checks the replica first).
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    can_query_checksum: ClassVar[bool] = False
    supports_direct_access: ClassVar[bool] = False
    # the monitor's stage deadlines (nodepilot/deadlines.py) are built on the same bounds
    timeout_base_s: float = TRANSFER_TIMEOUT_BASE_S
    timeout_per_mb_s: float = TRANSFER_TIMEOUT_PER_MB_S
    grace_s: float = TRANSFER_GRACE_S  # after a timeout: time the thread gets to stop and clean up

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
            raise TransferError(Reason.TIMEOUT, f"{what} timed out after {timeout:.4g} s")
        return task.result()


def _consume_result(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "never retrieved" warning for abandoned work


@functools.cache
def mover_classes() -> dict[str, type[Mover]]:
    """URL scheme -> mover class, from the entry points, then the built-ins not registered."""
    classes: dict[str, type[Mover]] = {}
    for cls in load_all(ENTRY_POINT_GROUP, BUILTIN_MOVERS).values():
        for scheme in cls.schemes:
            classes.setdefault(scheme.lower(), cls)
    return classes


def mover_for(url: str) -> Mover:
    scheme = urlsplit(url).scheme.lower()
    cls = mover_classes().get(scheme)
    if cls is None:
        raise TransferError(Reason.PROTOCOL, f"no mover for {scheme or 'a scheme-less'} URL {url}")
    return cls()
