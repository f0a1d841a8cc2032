"""The posix mover on real files: verified copies in and out, failures leave nothing behind."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
import zlib
from pathlib import Path

import pytest

from nodepilot.job import Checksum
from services.stager.movers import base, stream
from services.stager.movers.base import Reason, TransferError, mover_for
from services.stager.movers.posix import PosixMover

DATA = os.urandom(3 * (1 << 20) + 12345)  # several chunks and a short tail
ADLER = f"{zlib.adler32(DATA) & 0xFFFFFFFF:08x}"
MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture
def se(tmp_path: Path) -> Path:
    (tmp_path / "se").mkdir()
    (tmp_path / "se" / "data.bin").write_bytes(DATA)
    (tmp_path / "work").mkdir()
    return tmp_path


def copy_in(se: Path, expected: Checksum | None, size: int | None = len(DATA), name: str = "data.bin",
            mover: PosixMover | None = None) -> tuple[tuple[int, str], list[int]]:
    seen: list[int] = []
    url = (se / "se" / name).as_uri()
    result = asyncio.run((mover or PosixMover()).copy_in(url, se / "work" / name, expected, size, seen.append))
    return result, seen


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_copy_in_with_adler32(se: Path):
    (size, adler), seen = copy_in(se, Checksum("adler32", ADLER))
    assert (size, adler) == (len(DATA), ADLER)
    assert (se / "work" / "data.bin").read_bytes() == DATA
    assert seen[-1] == len(DATA) and len(seen) == 4  # progress once per MiB chunk
    assert leftovers(se / "work") == ["data.bin"]


def test_copy_in_with_md5(se: Path):
    (size, adler), _ = copy_in(se, Checksum("md5", MD5))
    assert (size, adler) == (len(DATA), ADLER)


@pytest.mark.parametrize(("expected", "reason"), [
    (Checksum("adler32", "00000001"), Reason.ADLER32),
    (Checksum("md5", "0" * 32), Reason.MD5),
])
def test_checksum_mismatch_leaves_no_local_file(se: Path, expected: Checksum, reason: str):
    with pytest.raises(TransferError) as info:
        copy_in(se, expected)
    assert info.value.reason == reason
    assert expected.value in info.value.diag
    assert leftovers(se / "work") == []


def test_missing_replica(se: Path):
    with pytest.raises(TransferError) as info:
        copy_in(se, None, name="absent.bin")
    assert info.value.reason == Reason.MISSING
    assert str(se / "se" / "absent.bin") in info.value.diag
    assert leftovers(se / "work") == []


def test_size_mismatch(se: Path):
    with pytest.raises(TransferError) as info:
        copy_in(se, None, size=10)
    assert info.value.reason == Reason.SIZE
    assert leftovers(se / "work") == []


def test_timeout_abandons_the_copy_and_cleans_up(se: Path):
    mover = PosixMover()
    mover.timeout_base_s, mover.timeout_per_mb_s = 0.05, 0.0
    chunks: list[int] = []

    def slow(done: int) -> None:  # runs in the copying thread: each chunk takes 0.1 s
        chunks.append(done)
        time.sleep(0.1)

    url = (se / "se" / "data.bin").as_uri()
    with pytest.raises(TransferError) as info:
        asyncio.run(mover.copy_in(url, se / "work" / "data.bin", None, len(DATA), slow))
    assert info.value.reason == Reason.TIMEOUT
    assert "timed out" in info.value.diag
    assert len(chunks) < 4  # stopped before the end
    assert leftovers(se / "work") == []


def test_disk_full_is_reported_as_such(se: Path, monkeypatch: pytest.MonkeyPatch):
    real_open_temp = base.open_temp

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_open_temp(directory: Path):
        path, fh = real_open_temp(directory)
        return path, Full(fh)

    monkeypatch.setattr(stream, "open_temp", full_open_temp)  # where StreamMover looks it up
    with pytest.raises(TransferError) as info:
        copy_in(se, None)
    assert info.value.reason == Reason.NOSPACE
    assert "no space left" in info.value.diag.lower()
    assert leftovers(se / "work") == []


def test_copy_out_renames_only_a_verified_copy(se: Path):
    src = se / "se" / "data.bin"
    dst = se / "out" / "a" / "b" / "data.bin"
    seen: list[int] = []
    size, adler = asyncio.run(PosixMover().copy_out(src, dst.as_uri(), seen.append))
    assert (size, adler) == (len(DATA), ADLER)
    assert dst.read_bytes() == DATA
    assert leftovers(dst.parent) == ["data.bin"]
    assert seen[-1] == len(DATA)


def test_copy_out_mismatch_after_copy_leaves_nothing(se: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(PosixMover, "stored_adler32", lambda _self, _url, _cancel: "deadbeef")
    dst = se / "out" / "data.bin"
    with pytest.raises(TransferError) as info:
        asyncio.run(PosixMover().copy_out(se / "se" / "data.bin", dst.as_uri(), lambda _n: None))
    assert info.value.reason == Reason.ADLER32
    assert leftovers(se / "out") == []


def test_copy_out_under_a_regular_file_fails(se: Path):
    blocker = se / "blocker"
    blocker.write_text("not a dir")
    with pytest.raises(TransferError) as info:
        asyncio.run(PosixMover().copy_out(se / "se" / "data.bin", (blocker / "x" / "f").as_uri(), lambda _n: None))
    assert info.value.reason == Reason.IO


def test_copy_out_of_a_missing_file(se: Path):
    with pytest.raises(TransferError) as info:
        asyncio.run(PosixMover().copy_out(se / "nothing", (se / "out" / "f").as_uri(), lambda _n: None))
    assert info.value.reason == Reason.MISSING


def test_mover_lookup_by_scheme():
    assert isinstance(mover_for("file:///tmp/x"), PosixMover)
    with pytest.raises(TransferError) as info:
        mover_for("gsiftp://host/x")
    assert info.value.reason == Reason.PROTOCOL
