"""Process helpers shared by the launcher and the embedded Redis."""

from __future__ import annotations

import contextlib
import ctypes
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
