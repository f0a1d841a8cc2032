"""Zipped batches of range outputs: one zip file of several outputs, staged out once.

The zip is written under a temporary name and renamed when complete, so a zip found at its name
after a crash is whole. Members are stored (not compressed: event outputs are compressed data
already) and copied from disk in chunks by ``zipfile`` (never a whole file in memory).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

ZIP_PREFIX = "EventService_premerge_"


def zip_name(job_id: int, first_range_id: str) -> str:
    """A name no other zip has: from the job and the id of the zip's first range (unique in the job)."""
    return f"{ZIP_PREFIX}{job_id}_{re.sub(r'[^A-Za-z0-9._-]', '_', first_range_id)}.zip"


def build_zip(workdir: Path, name: str, members: list[str]) -> Path:
    """``<workdir>/<name>`` holding the ``members`` (file names in ``workdir``); kept if it exists.
    Raises FileNotFoundError for a missing member, OSError for any other failure."""
    import zipfile  # lazily: only jobs that zip their outputs pay for it

    path = workdir / name
    if path.is_file():
        return path
    tmp = workdir / f".{name}.part"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member in members:
                zf.write(workdir / member, arcname=member)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
