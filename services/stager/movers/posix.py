"""The posix mover: ``file://`` endpoints (a local or shared file system).

Stage-in copies by default. ``NODEPILOT_POSIX_COPY_MODE`` (in the stager's environment, e.g. from the
queue's copysetup) may ask for ``link`` (a hard link: no data copied, the file system must be the
same, else the file is copied) or ``symlink``; the replica is still read once to verify its size and
checksum. Linked inputs share the SE's inode or path: only for payloads that do not write to their
inputs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from nodepilot.job import Checksum
from services.stager.movers.base import (
    Aborted,
    Progress,
    Reason,
    Source,
    TransferError,
    file_chunks,
    io_error,
    land,
    partial_name,
    wants_md5,
)
from services.stager.movers.stream import StreamMover
from services.stager.paths import file_url_path

log = logging.getLogger(__name__)

COPY_MODE_ENV = "NODEPILOT_POSIX_COPY_MODE"
COPY_MODES = ("copy", "link", "symlink")
CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK)  # another file system, links refused, too many
NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE)


class PosixMover(StreamMover):
    schemes = ("file",)
    supports_direct_access = True  # the payload opens the path itself

    async def copy_in(self, src_url: str, dst_path: Path, expected: Checksum | None,
                      expected_size: int | None, progress: Progress) -> tuple[int, str]:
        mode = copy_mode()
        if mode == "copy":
            return await super().copy_in(src_url, dst_path, expected, expected_size, progress)
        work = functools.partial(self._link_in, mode, src_url, Path(dst_path), expected, expected_size, progress)
        return await self.in_thread(work, self.timeout_for(expected_size), f"{mode} of {src_url}")

    def _link_in(self, mode: str, src_url: str, dst: Path, expected: Checksum | None, expected_size: int | None,
                 progress: Progress, cancel: threading.Event) -> tuple[int, str]:
        src = _path(src_url)
        if not src.is_file():
            raise TransferError(Reason.MISSING, f"replica missing on the SE: {src}")
        tmp: Path | None = dst.parent / partial_name()
        try:
            try:
                if mode == "symlink":
                    os.symlink(src.resolve(), tmp)
                else:  # to the file itself, also when the SE's entry is a symlink (Harvester's inputs)
                    os.link(src.resolve(), tmp)
            except OSError as exc:
                if exc.errno not in CANNOT_LINK:
                    raise io_error(exc, f"linking {src} to {dst}") from None
                log.info("cannot link %s into %s (%s): copying it", src, dst.parent, exc.strerror)
                tmp = None
                return self._copy_in(src_url, dst, expected, expected_size, progress, cancel)
            # the link and the SE's file are one file: read it for its size and checksum
            sums = self._read_sums(src_url, cancel, md5=wants_md5(expected), expected_size=expected_size,
                                   progress=progress)
            land(tmp, dst, sums, src_url, expected, expected_size)
            tmp = None
            return sums.size, sums.adler32.hexdigest()
        except Aborted:
            raise TransferError(Reason.TIMEOUT, f"{mode} of {src_url} abandoned") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    @contextlib.contextmanager
    def open_source(self, url: str) -> Iterator[Source]:
        path = _path(url)
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise TransferError(Reason.MISSING, f"replica missing on the SE: {path}") from None
        except OSError as exc:
            raise io_error(exc, f"opening {path}") from None
        with fh:
            info = os.fstat(fh.fileno())
            chunks = file_chunks(fh, f"reading {path}", self.chunk_size, reuse=True)
            if not stat.S_ISREG(info.st_mode):  # a pipe, a device: no size, no kernel copy
                yield Source(None, chunks)
                return
            copy_into = functools.partial(_copied, fh.fileno(), f"copying {path}", self.chunk_size)
            yield Source(info.st_size, chunks, copy_into)

    def upload(self, url: str, chunks: Iterator[bytes], size: int) -> None:
        path = _path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise io_error(exc, f"writing {path}") from None

    def rename(self, src_url: str, dst_url: str) -> None:
        os.replace(_path(src_url), _path(dst_url))

    def remove(self, url: str) -> None:
        _path(url).unlink(missing_ok=True)

    def classify(self, exc: Exception, what: str) -> TransferError:
        if isinstance(exc, OSError):
            return io_error(exc, what)
        return TransferError(Reason.IO, f"{what} failed: {exc!r}")


def copy_mode() -> str:
    mode = os.environ.get(COPY_MODE_ENV, "copy").strip().lower() or "copy"
    if mode not in COPY_MODES:
        log.warning("%s=%r is none of %s: copying", COPY_MODE_ENV, mode, "/".join(COPY_MODES))
        return "copy"
    return mode


def _copied(src_fd: int, what: str, size: int, dst_fd: int) -> Iterator[bytes]:
    """The source copied into ``dst_fd`` by the kernel (no pass through our memory: steadier and
    cheaper than writing from a buffer), each piece then read back from the copy for the sums."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    offset, kernel_copy = 0, True
    try:
        while True:
            n = 0
            if kernel_copy:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, size, offset, offset)
                except OSError as exc:
                    if exc.errno not in NO_COPY_RANGE:
                        raise
                    kernel_copy = False  # file systems that cannot: read and write from here on
                    os.lseek(src_fd, offset, os.SEEK_SET)
            if kernel_copy:
                n = os.preadv(dst_fd, [view[:n]], offset) if n else 0
            else:
                n = os.readv(src_fd, [view])
                written = 0
                while written < n:
                    written += os.pwrite(dst_fd, view[written:n], offset + written)
            if not n:
                return
            yield view[:n]  # type: ignore[misc]
            offset += n
    except OSError as exc:
        raise io_error(exc, what) from None


def _path(url: str) -> Path:
    try:
        return file_url_path(url)
    except ValueError as exc:
        raise TransferError(Reason.PROTOCOL, str(exc)) from None
