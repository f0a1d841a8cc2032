"""``StreamMover``: the transfer logic every protocol shares, once (docs/movers.md): local temporary
names, streamed size/adler32/md5 checks, upload under a temporary name then rename, verification of
the stored copy, clean-up, cancellation between chunks. A protocol only gives its primitives."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeVar

from nodepilot.checksums import CHUNK
from nodepilot.job import Checksum
from services.stager.movers.base import (
    Aborted,
    Mover,
    Progress,
    Reason,
    RemoteStat,
    Source,
    StreamSums,
    TransferError,
    file_chunks,
    io_error,
    land,
    open_temp,
    summed,
    temp_url,
    wants_md5,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class StreamMover(Mover):
    """A mover made of protocol primitives; the transfer logic is here, once.

    Stage-in: open the replica, check its size, stream it into a local temporary file summing
    adler32 (and md5 when the job's checksum is md5), check size and checksum, rename.
    Stage-out: stream the local file to a temporary name beside the destination (or straight to it
    when ``atomic_upload``: the protocol makes an upload appear whole or not at all), check the stored
    copy (``stored_adler32``), rename; on any failure or cancellation the partial copy is removed.

    Primitives run in the copying thread and may raise anything: ``classify`` turns a protocol's
    exceptions into ``TransferError`` (with ``transient`` set for errors worth a retry).
    """

    chunk_size: ClassVar[int] = CHUNK
    atomic_upload: ClassVar[bool] = False
    call_timeout_s: ClassVar[float] = 60.0  # one network call (open, read of a chunk, rename...)
    verification: ClassVar[str] = "stored copy re-read"  # how copy_out checks the stored copy

    # --- protocol primitives ---------------------------------------------------------------
    def open_source(self, url: str) -> contextlib.AbstractContextManager[Source]:
        raise NotImplementedError

    def upload(self, url: str, chunks: Iterator[bytes], size: int) -> None:
        """Write ``chunks`` (``size`` bytes in all) to ``url``, creating parent directories."""
        raise NotImplementedError

    def rename(self, src_url: str, dst_url: str) -> None:
        """Give a stored file its final name, replacing any file there."""
        raise NotImplementedError

    def remove(self, url: str) -> None:
        raise NotImplementedError

    def classify(self, exc: Exception, what: str) -> TransferError:
        raise NotImplementedError

    def remote_stat(self, url: str) -> RemoteStat:
        """Size (and adler32 when the storage can tell it) of a stored file; by default from opening it."""
        with self.open_source(url) as source:
            if source.size is not None:
                return RemoteStat(source.size)
        return RemoteStat(self._read_sums(url, threading.Event()).size)

    def stored_adler32(self, url: str, cancel: threading.Event) -> str | None:
        """adler32 of a stored copy; by default read back. None: ``upload`` verified the copy itself."""
        return self._read_sums(url, cancel).adler32.hexdigest()

    # --- the shared logic --------------------------------------------------------------------
    async def copy_in(self, src_url: str, dst_path: Path, expected: Checksum | None,
                      expected_size: int | None, progress: Progress) -> tuple[int, str]:
        work = functools.partial(self._copy_in, src_url, Path(dst_path), expected, expected_size, progress)
        return await self.in_thread(work, self.timeout_for(expected_size), f"copy of {src_url}")

    async def copy_out(self, src_path: Path, dst_url: str, progress: Progress) -> tuple[int, str]:
        src = Path(src_path)
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            raise TransferError(Reason.MISSING, f"output file {src} not found") from None
        except OSError as exc:
            raise io_error(exc, f"reading {src}") from None
        work = functools.partial(self._copy_out, src, dst_url, progress)
        return await self.in_thread(work, self.timeout_for(size), f"copy of {src} to {dst_url}")

    async def stat(self, url: str) -> RemoteStat:
        """The stored file's size (and adler32 when ``can_query_checksum``), for direct access."""
        return await self.in_thread(lambda _cancel: self._remote(f"stat of {url}", self.remote_stat, url),
                                    self.call_timeout_s * 2, f"stat of {url}")

    def _remote(self, what: str, call: Callable[..., T], *args: object) -> T:
        """A primitive's call, its errors as ``TransferError``."""
        try:
            return call(*args)
        except (TransferError, Aborted):
            raise
        except Exception as exc:
            raise self.classify(exc, what) from None

    def _read_sums(self, url: str, cancel: threading.Event, md5: bool = False,
                   into: BinaryIO | None = None, expected_size: int | None = None,
                   progress: Progress | None = None) -> StreamSums:
        """Stream a stored file (into a local file, or nowhere), summing it."""
        sums = StreamSums(md5=md5)
        report = progress or (lambda _n: None)
        with contextlib.ExitStack() as stack:
            source = self._remote(f"opening {url}", lambda: stack.enter_context(self.open_source(url)))
            if expected_size is not None and source.size is not None and source.size != expected_size:
                raise TransferError(Reason.SIZE, f"size mismatch for {url}: expected {expected_size}, "
                                                 f"the SE has {source.size}")
            fd = _fileno(into) if source.copy_into is not None else None
            copied = source.copy_into is not None and fd is not None
            chunks = summed(source.copy_into(fd) if copied else source.chunks, sums, report, cancel)  # type: ignore[misc,arg-type]
            while True:
                chunk = self._remote(f"reading {url}", next, chunks, b"")
                if not chunk:
                    break
                if into is not None and not copied:
                    try:
                        into.write(chunk)
                    except OSError as exc:
                        raise io_error(exc, f"writing the copy of {url}") from None
        return sums

    def _copy_in(self, src_url: str, dst: Path, expected: Checksum | None, expected_size: int | None,
                 progress: Progress, cancel: threading.Event) -> tuple[int, str]:
        tmp: Path | None = None
        try:
            try:
                tmp, fh = open_temp(dst.parent)
            except OSError as exc:
                raise io_error(exc, f"creating a file in {dst.parent}") from None
            with fh:
                sums = self._read_sums(src_url, cancel, md5=wants_md5(expected), into=fh,
                                       expected_size=expected_size, progress=progress)
            land(tmp, dst, sums, src_url, expected, expected_size)
            tmp = None
            return sums.size, sums.adler32.hexdigest()
        except Aborted:
            raise TransferError(Reason.TIMEOUT, f"copy of {src_url} abandoned") from None
        except OSError as exc:  # closing the local file (a delayed write error)
            raise io_error(exc, f"writing {dst}") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _copy_out(self, src: Path, dst_url: str, progress: Progress, cancel: threading.Event) -> tuple[int, str]:
        """Written under a temporary name, checked there, and only then renamed: a file at the final
        name is always complete and verified."""
        target = dst_url if self.atomic_upload else temp_url(dst_url)
        written = False  # ``target`` may hold something to remove if we fail
        try:
            try:
                fh = open(src, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise TransferError(Reason.MISSING, f"output file {src} not found") from None
            except OSError as exc:
                raise io_error(exc, f"reading {src}") from None
            sums = StreamSums()
            with fh:
                size = os.fstat(fh.fileno()).st_size
                chunks = summed(file_chunks(fh, f"reading {src}", self.chunk_size), sums, progress, cancel)
                written = not self.atomic_upload  # an atomic upload leaves nothing when it fails
                self._on_storage(f"writing {target}", self.upload, target, chunks, size)
                written = True
            if sums.size != size:
                raise TransferError(Reason.IO, f"{src} changed while it was copied: {size} bytes, then {sums.size}")
            source_adler = sums.adler32.hexdigest()
            stored = self._on_storage(f"checking {target}", self.stored_adler32, target, cancel)
            if stored is not None and stored != source_adler:
                raise TransferError(Reason.ADLER32, f"adler32 mismatch after copy to {dst_url}: "
                                                    f"source {source_adler}, stored {stored}")
            if target != dst_url:
                self._on_storage(f"renaming {target} to {dst_url}", self.rename, target, dst_url)
            written = False
            return sums.size, source_adler
        except Aborted:
            raise TransferError(Reason.TIMEOUT, f"copy of {src} to {dst_url} abandoned") from None
        finally:
            if written:
                try:
                    self.remove(target)
                except Exception as exc:  # the server may be gone: a partial name is harmless
                    log.warning("could not remove the partial copy %s: %r", target, exc)

    def _on_storage(self, what: str, call: Callable[..., T], *args: object) -> T:
        """A remote call of a stage-out: "not found" there is no missing output but a storage failure."""
        try:
            return self._remote(what, call, *args)
        except TransferError as exc:
            if exc.reason != Reason.MISSING:
                raise
            raise TransferError(Reason.IO, exc.diag, exc.transient) from None


def _fileno(fh: BinaryIO | None) -> int | None:
    try:
        return fh.fileno() if fh is not None else None
    except (AttributeError, OSError, ValueError):  # not a real file
        return None
