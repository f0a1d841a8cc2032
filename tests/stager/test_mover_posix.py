"""The posix mover's own ways: copies made by the kernel and read back for the sums, link modes
(NODEPILOT_POSIX_COPY_MODE) that copy nothing and still verify."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot.job import Checksum
from services.stager.movers.base import Reason, TransferError
from services.stager.movers.posix import COPY_MODE_ENV, PosixMover

DATA = os.urandom(2 * (1 << 20) + 321)
ADLER = f"{zlib.adler32(DATA) & 0xFFFFFFFF:08x}"


@pytest.fixture
def se(tmp_path: Path) -> Path:
    (tmp_path / "se").mkdir()
    (tmp_path / "se" / "in.dat").write_bytes(DATA)
    (tmp_path / "work").mkdir()
    return tmp_path


def link_in(src: Path, dst: Path, mode: str, monkeypatch: pytest.MonkeyPatch, checksum: str = ADLER,
            size: int | None = len(DATA)) -> tuple[int, str]:
    monkeypatch.setenv(COPY_MODE_ENV, mode)
    return asyncio.run(PosixMover().copy_in(src.as_uri(), dst, Checksum("adler32", checksum), size, lambda _n: None))


def test_hard_link(se: Path, monkeypatch: pytest.MonkeyPatch):
    src, dst = se / "se" / "in.dat", se / "work" / "in.dat"
    assert link_in(src, dst, "link", monkeypatch) == (len(DATA), ADLER)
    assert dst.stat().st_ino == src.stat().st_ino and not dst.is_symlink()
    assert os.listdir(se / "work") == ["in.dat"]


def test_symlink(se: Path, monkeypatch: pytest.MonkeyPatch):
    src, dst = se / "se" / "in.dat", se / "work" / "in.dat"
    assert link_in(src, dst, "symlink", monkeypatch) == (len(DATA), ADLER)
    assert dst.is_symlink() and dst.resolve() == src.resolve()


@pytest.mark.parametrize("mode", ["link", "symlink"])
def test_a_linked_replica_is_still_verified(se: Path, monkeypatch: pytest.MonkeyPatch, mode: str):
    with pytest.raises(TransferError) as info:
        link_in(se / "se" / "in.dat", se / "work" / "in.dat", mode, monkeypatch, checksum="00000001")
    assert info.value.reason == Reason.ADLER32
    with pytest.raises(TransferError) as info:
        link_in(se / "se" / "in.dat", se / "work" / "in.dat", mode, monkeypatch, size=5)
    assert info.value.reason == Reason.SIZE
    with pytest.raises(TransferError) as info:
        link_in(se / "se" / "absent.dat", se / "work" / "absent.dat", mode, monkeypatch)
    assert info.value.reason == Reason.MISSING and str(se / "se" / "absent.dat") in info.value.diag
    assert os.listdir(se / "work") == []
    assert (se / "se" / "in.dat").read_bytes() == DATA


@pytest.fixture
def other_fs() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm for a second file system")
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_hard_link_across_file_systems_copies(se: Path, other_fs: Path, monkeypatch: pytest.MonkeyPatch):
    if os.stat(other_fs).st_dev == os.stat(se).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    dst = other_fs / "in.dat"
    assert link_in(se / "se" / "in.dat", dst, "link", monkeypatch) == (len(DATA), ADLER)
    assert dst.read_bytes() == DATA and dst.stat().st_nlink == 1
    assert os.listdir(other_fs) == ["in.dat"]


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_sums_what_landed(se: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool):
    """The copy is made by copy_file_range and read back for the checksum; where the file systems
    cannot (EXDEV...), by plain reads and writes."""
    calls: list[int] = []
    real = os.copy_file_range

    def copy_file_range(*args: int) -> int:
        calls.append(args[2])
        if not kernel_copy:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    seen: list[int] = []
    dst = se / "work" / "in.dat"
    result = asyncio.run(PosixMover().copy_in((se / "se" / "in.dat").as_uri(), dst, Checksum("adler32", ADLER),
                                              len(DATA), seen.append))
    assert result == (len(DATA), ADLER) and dst.read_bytes() == DATA
    assert seen[-1] == len(DATA) and len(seen) == 3  # once per MiB, as for any copy
    assert len(calls) == (4 if kernel_copy else 1)  # 3 pieces and the end; or the first refusal only


def test_unknown_mode_copies(se: Path, monkeypatch: pytest.MonkeyPatch):
    dst = se / "work" / "in.dat"
    assert link_in(se / "se" / "in.dat", dst, "teleport", monkeypatch) == (len(DATA), ADLER)
    assert dst.stat().st_ino != (se / "se" / "in.dat").stat().st_ino
