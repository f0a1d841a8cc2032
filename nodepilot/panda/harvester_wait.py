"""Waiting for a file Harvester writes into the access point: woken by inotify when it is there whole
(closed by its writer, or renamed into place), bounded, cancellable.

inotify sees only what this host's kernel does: on a shared file system (NFS, Lustre, GPFS...) a file
Harvester writes from another host raises no event here. There, and only there, the directory is also
looked at again every ``REMOTE_RECHECK_S`` seconds (the mount's type tells, from /proc/self/mounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

WATCHED = F.MOVED_TO | F.CLOSE_WRITE  # written whole: closed by its writer, or renamed into place
REMOTE_RECHECK_S = 5.0
SETTLE_S = 1.0
SHARED_TYPES = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs", "panfs",
                "9p", "afs", "orangefs", "pvfs2", "wekafs", "virtiofs")


def mount_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` ("" when unknown)."""
    target, best, kind = str(path.resolve()), -1, ""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def shared(path: Path) -> bool:
    kind = mount_type(path)
    return kind in SHARED_TYPES or kind.startswith("fuse.")


def _settled(directory: Path, names: tuple[str, ...], closed: set[str]) -> tuple[Path | None, bool]:
    """(the first of ``names`` written whole, whether one is there still being written). Whole: its writer
    closed it or renamed it into place (an event), or it has not changed for ``SETTLE_S`` (Harvester writes
    the job spec in place, not through a rename)."""
    pending = False
    for name in names:
        path = directory / name
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if name in closed or age >= SETTLE_S:
            return path, False
        pending = True
    return None, pending


async def wait_for_file(directory: Path, names: tuple[str, ...], timeout: float, settle: bool = True) -> Path | None:
    """The first of ``names`` written whole in ``directory``, waiting up to ``timeout`` s; None if none came.
    A file that is there but still being written at the end gets ``SETTLE_S`` more (``settle``): a job spec
    Harvester is writing is not "no job", even with a wait of 0."""
    inotify = INotify()
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    closed: set[str] = set()
    try:
        inotify.add_watch(directory, WATCHED)  # before the first look: nothing falls between the two
        loop.add_reader(inotify.fileno(), woken.set)
        remote = REMOTE_RECHECK_S if shared(directory) else None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found, pending = _settled(directory, names, closed)
                    if found is not None:
                        return found
                    with contextlib.suppress(TimeoutError):  # a look again only for what raises no event
                        await asyncio.wait_for(woken.wait(), SETTLE_S if pending else remote)
                    woken.clear()
                    closed.update(e.name for e in inotify.read(timeout=0) if e.name in names)
        except TimeoutError:
            found, pending = _settled(directory, names, closed)
            if found is None and pending and settle:
                return await wait_for_file(directory, names, SETTLE_S + 0.1, settle=False)
            return found
        finally:
            loop.remove_reader(inotify.fileno())
    finally:
        inotify.close()
