"""Waiting for a file Harvester writes into the access point: woken by inotify when it appears (created,
or renamed into place), bounded, cancellable.

inotify sees only what this host's kernel does: on a shared file system (NFS, Lustre, GPFS...) a file
Harvester writes from another host raises no event here. There, and only there, the directory is also
looked at again every ``REMOTE_RECHECK_S`` seconds (the mount's type tells, from /proc/self/mounts).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

WATCHED = F.CREATE | F.MOVED_TO | F.CLOSE_WRITE
REMOTE_RECHECK_S = 5.0
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


def _first_present(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        path = directory / name
        if path.is_file():
            return path
    return None


async def wait_for_file(directory: Path, names: tuple[str, ...], timeout: float) -> Path | None:
    """The first of ``names`` present in ``directory``, waiting up to ``timeout`` s; None if none came."""
    inotify = INotify()
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    try:
        inotify.add_watch(directory, WATCHED)  # before the first look: nothing falls between the two
        loop.add_reader(inotify.fileno(), woken.set)
        try:
            recheck = REMOTE_RECHECK_S if shared(directory) else None
            async with asyncio.timeout(timeout):
                while (found := _first_present(directory, names)) is None:
                    with contextlib.suppress(TimeoutError):  # only when another host may write unseen
                        await asyncio.wait_for(woken.wait(), recheck)
                    woken.clear()
                    inotify.read(timeout=0)  # drained: the next wait is for a new event
                return found
        except TimeoutError:
            return _first_present(directory, names)
        finally:
            loop.remove_reader(inotify.fileno())
    finally:
        inotify.close()
