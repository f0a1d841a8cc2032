"""The XRootD mover: ``root://`` and ``xroot://`` endpoints, through the XRootD Python client.

Reads and writes go chunk by chunk through ``XRootD.client.File`` (a few reads kept in flight, so
the network is busy while a chunk is summed); the stored copy of an upload is checked with the
server's own adler32 (``FileSystem.query(CHECKSUM)``) before its rename (``mv``).

The client library is imported on first use (it is heavy). Its connection defaults suit a pilot
that retries by itself: one connection attempt, a 10 s window, 1 s time-out resolution; variables
``XRD_*`` already in the environment (e.g. from the queue's copysetup) win.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import deque
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

from services.stager.movers.base import Reason, RemoteStat, Source, TransferError
from services.stager.movers.stream import StreamMover

CLIENT_DEFAULTS = {"XRD_CONNECTIONRETRY": "1", "XRD_CONNECTIONWINDOW": "10", "XRD_TIMEOUTRESOLUTION": "1",
                   "XRD_STREAMERRORWINDOW": "0"}

# XRootD protocol error numbers (XProtocol.hh)
KXR_NO_SPACE, KXR_NOT_AUTHORIZED, KXR_NOT_FOUND, KXR_SERVER_ERROR = 3009, 3010, 3011, 3012
KXR_IS_DIRECTORY, KXR_CHECKSUM_ERROR, KXR_OVER_QUOTA, KXR_OVERLOADED = 3016, 3019, 3021, 3024
KXR_NOT_FILE, KXR_AUTH_FAILED, KXR_REQUEST_TIMED_OUT, KXR_TIMER_EXPIRED = 3015, 3030, 3034, 3035
TRANSIENT_ERRNOS = {KXR_SERVER_ERROR, KXR_OVERLOADED, KXR_REQUEST_TIMED_OUT, KXR_TIMER_EXPIRED}
MISSING_ERRNOS = {KXR_NOT_FOUND, KXR_IS_DIRECTORY, KXR_NOT_FILE}


@functools.cache
def _client() -> ModuleType:
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from XRootD import client

    return client


class XRootDFailure(Exception):
    def __init__(self, status: Any) -> None:
        super().__init__(str(status.message).strip())
        self.status = status


def _ok(result: tuple[Any, Any]) -> Any:
    """The response of a client call; its status raised as ``XRootDFailure`` when not OK."""
    status, response = result
    if not status.ok:
        raise XRootDFailure(status)
    return response


def split(url: str) -> tuple[str, str]:
    """``root://host:port//abs/path`` -> (``root://host:port``, ``/abs/path``); a path given with one
    slash (``root://host/path``) is taken as absolute too, as the server refuses relative paths."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise TransferError(Reason.PROTOCOL, f"no host in XRootD URL {url}")
    return f"root://{parts.netloc}", "/" + unquote(parts.path).lstrip("/")


def _file_url(url: str) -> str:
    host, path = split(url)
    return f"{host}/{path}"


class XRootDMover(StreamMover):
    schemes = ("root", "xroot")
    can_query_checksum = True
    supports_direct_access = True
    verification = "server adler32 (checksum query)"
    reads_in_flight = 4  # of chunk_size (1 MiB: larger chunks measured slower, out of the CPU caches)

    @contextlib.contextmanager
    def open_source(self, url: str) -> Iterator[Source]:
        client = _client()
        fh = client.File()
        _ok(fh.open(_file_url(url), client.flags.OpenFlags.READ, timeout=self._timeout))
        try:
            size = _ok(fh.stat(timeout=self._timeout)).size
            yield Source(size, self._chunks(fh, size))
        finally:
            with contextlib.suppress(Exception):
                fh.close(timeout=self._timeout)

    def _chunks(self, fh: Any, size: int) -> Iterator[bytes]:
        """The file in order, with up to ``reads_in_flight`` asynchronous reads ahead."""
        pending: deque[_Read] = deque()
        offset = 0
        try:
            while offset < size or pending:
                while offset < size and len(pending) < self.reads_in_flight:
                    length = min(self.chunk_size, size - offset)
                    pending.append(_Read(fh, offset, length, self._timeout))
                    offset += length
                read = pending.popleft()
                data = read.result(self._timeout + 5)
                if len(data) != read.length:
                    raise TransferError(Reason.SIZE, f"short read at offset {read.offset}: {len(data)} of "
                                                     f"{read.length} bytes (the file changed on the SE?)")
                yield data
        finally:
            for read in pending:  # the file is closed after them, not under them
                read.done.wait(self._timeout + 5)

    def upload(self, url: str, chunks: Iterator[bytes], size: int) -> None:
        client = _client()
        flags = client.flags.OpenFlags
        fh = client.File()
        _ok(fh.open(_file_url(url), flags.NEW | flags.MAKEPATH, mode=0o644, timeout=self._timeout))
        try:
            offset = 0
            for chunk in chunks:
                _ok(fh.write(chunk, offset, timeout=self._timeout))
                offset += len(chunk)
            _ok(fh.close(timeout=self._timeout))
        finally:
            if fh.is_open():
                with contextlib.suppress(Exception):
                    fh.close(timeout=self._timeout)

    def rename(self, src_url: str, dst_url: str) -> None:
        host, src = split(src_url)
        _, dst = split(dst_url)
        _ok(_client().FileSystem(host).mv(src, dst, timeout=self._timeout))

    def remove(self, url: str) -> None:
        host, path = split(url)
        _ok(_client().FileSystem(host).rm(path, timeout=self._timeout))

    def stored_adler32(self, url: str, cancel: threading.Event) -> str:
        host, path = split(url)
        return self._checksum(_client().FileSystem(host), path)

    def remote_stat(self, url: str) -> RemoteStat:
        host, path = split(url)
        fs = _client().FileSystem(host)
        return RemoteStat(_ok(fs.stat(path, timeout=self._timeout)).size, self._checksum(fs, path))

    def _checksum(self, fs: Any, path: str) -> str:
        reply = _ok(fs.query(_client().flags.QueryCode.CHECKSUM, path, timeout=self._timeout))
        text = reply.decode(errors="replace").strip("\x00 \n") if isinstance(reply, bytes) else str(reply)
        algorithm, _, value = text.partition(" ")
        if algorithm != "adler32" or not value:
            raise TransferError(Reason.IO, f"the server gave no adler32 for {path}: {text!r}")
        return value.strip().lower().zfill(8)

    def classify(self, exc: Exception, what: str) -> TransferError:
        if not isinstance(exc, XRootDFailure):
            return TransferError(Reason.IO, f"{what} failed: {exc!r}")
        status, diag = exc.status, f"{what} failed: {exc}"
        errno = getattr(status, "errno", 0)
        server_said = status.code == status.errErrorResponse
        if status.code == status.errNotFound or (server_said and errno in MISSING_ERRNOS):
            return TransferError(Reason.MISSING, diag)
        if server_said and errno in (KXR_NO_SPACE, KXR_OVER_QUOTA):
            return TransferError(Reason.NOSPACE, diag)
        if status.code == status.errCheckSumError or (server_said and errno == KXR_CHECKSUM_ERROR):
            return TransferError(Reason.ADLER32, diag)
        if server_said:  # the server answered: permission, bad request... final unless it says busy
            return TransferError(Reason.IO, diag, transient=errno in TRANSIENT_ERRNOS)
        if status.code in (status.errOperationExpired, status.errSocketTimeout):
            return TransferError(Reason.IO, f"{diag} (server time-out)", transient=True)
        # no answer: connection refused or lost, socket errors, redirect/handshake trouble; not our own mistakes
        local = (status.errInvalidArgs, status.errInvalidAddr, status.errNotSupported, status.errLocalError)
        return TransferError(Reason.IO, diag, transient=status.code not in local)

    @property
    def _timeout(self) -> int:
        return int(self.call_timeout_s)


class _Read:
    """One asynchronous read; ``result`` blocks until the client's callback has the data."""

    def __init__(self, fh: Any, offset: int, length: int, timeout: int) -> None:
        self.offset, self.length = offset, length
        self.done = threading.Event()
        self.status: Any = None
        self.data = b""
        status = fh.read(offset, length, timeout=timeout, callback=self._callback)
        if not status.ok:
            self.status = status
            self.done.set()

    def _callback(self, status: Any, response: Any, _hosts: Any) -> None:
        self.status, self.data = status, response or b""
        self.done.set()

    def result(self, timeout: float) -> bytes:
        if not self.done.wait(timeout):
            raise TransferError(Reason.IO, f"no answer to a read at offset {self.offset} within {timeout:.0f} s",
                                transient=True)
        if not self.status.ok:
            raise XRootDFailure(self.status)
        return self.data
