"""The posix mover: ``file://`` endpoints (a local or shared file system)."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from functools import partial
from pathlib import Path
from typing import BinaryIO

from nodepilot.checksums import CHUNK, Adler32
from nodepilot.job import Checksum
from services.stager.movers.base import (
    Aborted,
    Mover,
    Progress,
    Reason,
    StreamSums,
    TransferError,
    io_error,
    stream_copy,
)
from services.stager.paths import file_url_path


class PosixMover(Mover):
    schemes = ("file",)

    async def copy_in(self, src_url: str, dst_path: Path, expected: Checksum | None,
                      expected_size: int | None, progress: Progress) -> tuple[int, str]:
        src = _path(src_url)
        work = partial(_copy_in, src, Path(dst_path), expected, expected_size, progress)
        return await self.in_thread(work, self.timeout_for(expected_size), f"copy of {src}")

    async def copy_out(self, src_path: Path, dst_url: str, progress: Progress) -> tuple[int, str]:
        src, dst = Path(src_path), _path(dst_url)
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            raise TransferError(Reason.MISSING, f"output file {src} not found") from None
        except OSError as exc:
            raise io_error(exc, f"reading {src}") from None
        work = partial(_copy_out, src, dst, progress)
        return await self.in_thread(work, self.timeout_for(size), f"copy of {src} to {dst}")


def _path(url: str) -> Path:
    try:
        return file_url_path(url)
    except ValueError as exc:
        raise TransferError(Reason.PROTOCOL, str(exc)) from None


def _open_temp(directory: Path) -> tuple[Path, BinaryIO]:
    """A new file in ``directory`` under a name no reader takes for a finished file."""
    path = directory / f".nodepilot-{uuid.uuid4().hex}.part"
    return path, open(path, "xb")  # closed by the caller


def _copy_in(src: Path, dst: Path, expected: Checksum | None, expected_size: int | None,
             progress: Progress, cancel: threading.Event) -> tuple[int, str]:
    try:
        fh_src = open(src, "rb")  # noqa: SIM115
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise TransferError(Reason.MISSING, f"replica missing on the SE: {src}") from None
    except OSError as exc:
        raise io_error(exc, f"opening {src}") from None
    tmp: Path | None = None
    try:
        with fh_src:
            size = os.fstat(fh_src.fileno()).st_size
            if expected_size is not None and size != expected_size:
                raise TransferError(Reason.SIZE, f"size mismatch for {src}: expected {expected_size}, "
                                                 f"the SE has {size}")
            sums = StreamSums(md5=expected is not None and expected.algorithm == "md5")
            try:
                tmp, fh_dst = _open_temp(dst.parent)
                with fh_dst:
                    stream_copy(fh_src, fh_dst, sums, progress, cancel)
            except OSError as exc:
                raise io_error(exc, f"copying {src} to {dst}") from None
        if expected_size is not None and sums.size != expected_size:
            raise TransferError(Reason.SIZE, f"size mismatch for {src}: expected {expected_size}, "
                                             f"copied {sums.size}")
        sums.verify(expected, str(src))
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            raise io_error(exc, f"renaming to {dst}") from None
        tmp = None
        return sums.size, sums.adler32.hexdigest()
    except Aborted:
        raise TransferError(Reason.TIMEOUT, f"copy of {src} abandoned") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _copy_out(src: Path, dst: Path, progress: Progress, cancel: threading.Event) -> tuple[int, str]:
    """Write under a temporary name, re-read it, and only then give it its real name:
    a file at the final path is always complete and verified."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(exc, f"creating {dst.parent}") from None
    tmp: Path | None = None
    try:
        sums = StreamSums()
        try:
            fh_src = open(src, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise TransferError(Reason.MISSING, f"output file {src} not found") from None
        except OSError as exc:
            raise io_error(exc, f"reading {src}") from None
        try:
            with fh_src:
                tmp, fh_dst = _open_temp(dst.parent)
                with fh_dst:
                    stream_copy(fh_src, fh_dst, sums, progress, cancel)
                    fh_dst.flush()
                    os.fsync(fh_dst.fileno())
        except OSError as exc:
            raise io_error(exc, f"copying {src} to {dst}") from None
        source_adler = sums.adler32.hexdigest()
        try:
            stored = _reread_adler32(tmp, cancel)
        except OSError as exc:
            raise io_error(exc, f"re-reading {dst}") from None
        if stored != source_adler:
            raise TransferError(Reason.ADLER32, f"adler32 mismatch after copy to {dst}: "
                                                f"source {source_adler}, stored {stored}")
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            raise io_error(exc, f"renaming to {dst}") from None
        tmp = None
        return sums.size, source_adler
    except Aborted:
        raise TransferError(Reason.TIMEOUT, f"copy of {src} to {dst} abandoned") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _reread_adler32(path: Path, cancel: threading.Event) -> str:
    adler = Adler32()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if cancel.is_set():
                raise Aborted
            adler.update(chunk)
    return adler.hexdigest()
