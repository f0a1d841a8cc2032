"""One pilot per run directory, and nothing of it left behind but its jobs table.

The run dir holds the pilot's sockets, its Redis (socket, password, append-only file) and
``pilot.json``. A second pilot given the same dir (``--run-dir``, or ``NODEPILOT_RUN_DIR`` set by a
batch system for every pilot of a node) would reuse the first one's Redis socket and data and then
remove its sockets: an exclusive lock on ``<run>/pilot.lock`` (flock, released by the kernel when the
pilot ends, however it ends) makes the second one refuse at once. At exit the dir is emptied but for
``summary.json`` (``nodepilot summary RUN/summary.json``); a dir with nothing to keep is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

LOCK_NAME = "pilot.lock"
KEPT = ("summary.json",)


def check_work_dir(path: Path) -> None:
    """The work dir exists (created here) and can be written; ValueError saying why not, in one line."""
    blocker = next((p for p in reversed((path, *path.parents)) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"work dir {path}: not writable ({blocker} is a file, not a directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nodepilot-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"work dir {path}: not writable ({exc.strerror or exc})") from None


class RunDirBusy(Exception):
    """Another pilot holds the run dir."""


class RunDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self, clean: bool = True) -> None:
        """Remove what the pilot left in its run dir (``clean``), then drop the lock."""
        if self._fd < 0:
            return
        if clean:
            remove_contents(self.path, keep=KEPT)
        os.close(self._fd)
        self._fd = -1
        if clean:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when nothing was kept


def lock_run_dir(path: Path) -> RunDirLock:
    """Create the run dir (the pilot's user only) and hold it; RunDirBusy if another pilot does."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirBusy(f"run dir {path} is in use by another pilot (pid {holder}): "
                         "give each pilot its own --run-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunDirLock(path, fd)


def remove_contents(path: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove every entry of ``path`` but those named in ``keep`` (the lock file last)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in path.iterdir():
            if entry.name in keep or entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    (path / LOCK_NAME).unlink(missing_ok=True)
