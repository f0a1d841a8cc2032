"""The job's log tarball: the work dir as ``<tarball_dir>/...`` in a tar.gz, streamed to disk."""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path


def make_tarball(workdir: Path, tarball: Path, tarball_dir: str, exclude: Iterable[str] = ()) -> int:
    """Write ``tarball`` from ``workdir``, leaving out the top-level names in ``exclude`` and the
    tarball itself; returns its size. A failed tarball is removed."""
    workdir, tarball = Path(workdir), Path(tarball)
    skip = {*exclude, tarball.name} if tarball.parent.resolve() == workdir.resolve() else set(exclude)
    try:
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(workdir, arcname=tarball_dir, recursive=False)
            for name in sorted(os.listdir(workdir)):
                if name not in skip:
                    tar.add(workdir / name, arcname=f"{tarball_dir}/{name}", recursive=True)
    except BaseException:
        with contextlib.suppress(OSError):
            tarball.unlink()
        raise
    return tarball.stat().st_size
