"""Checksums computed while data streams by (never a whole file in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path

try:  # zlib-ng's adler32 is SIMD: about 10x zlib's, the stager's main CPU cost otherwise
    from zlib_ng.zlib_ng import adler32
except ImportError:  # pragma: no cover - the same values, slower
    from zlib import adler32

CHUNK = 1 << 20


class Adler32:
    def __init__(self) -> None:
        self.value = 1

    def update(self, data: bytes) -> None:
        self.value = adler32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


def hasher(algorithm: str) -> Adler32 | hashlib._Hash:
    if algorithm == "adler32":
        return Adler32()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def file_checksum(path: str | Path, algorithm: str = "adler32") -> str:
    h = hasher(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
