"""Waiting for a file Harvester writes into the access point: woken by inotify when it appears (created,
or renamed into place), bounded, cancellable; no polling."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

WATCHED = F.CREATE | F.MOVED_TO | F.CLOSE_WRITE


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
            async with asyncio.timeout(timeout):
                while (found := _first_present(directory, names)) is None:
                    await woken.wait()
                    woken.clear()
                    inotify.read(timeout=0)  # drained: the next wait is for a new event
                return found
        except TimeoutError:
            return _first_present(directory, names)
        finally:
            loop.remove_reader(inotify.fileno())
    finally:
        inotify.close()
