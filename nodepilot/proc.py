"""Process helpers shared by the launcher and the embedded Redis."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux; kept across
    exec), so nothing the pilot started outlives a pilot that was killed with SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def name_process(name: str) -> None:
    """The name ``ps``, ``top`` and psutil show for this process (at most 15 bytes; the command line is
    unchanged), so that each service's memory and CPU can be told apart."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15])


PILOT_PID: int | None = None  # set in the child that reads the command line (nodepilot/entry.py): its parent's


def pilot_pid() -> int:
    """The pilot's process id (what names its run dir and its relay worker): this process's, or, in the child
    that reads the command line for it, its parent's (the child is gone within a fraction of a second)."""
    return PILOT_PID or os.getpid()
