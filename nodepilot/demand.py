"""Services that run only while they have work: the monitor says what it needs, the launcher keeps it running.

With services as processes, every service the launcher forks holds 7-16 MB of the slot's memory of its own
(docs/memory.md), also while it waits with nothing to do: the stager while the payload runs, the runner
while outputs go out, the event-service client in a job that has no event ranges. So the launcher starts
the monitor and the runner (the first payload must not wait for it), and every other service only when
the monitor needs it; a service nobody needs any more retires.

The monitor wraps each step that a service works for in ``need(name)``: ``+name`` is written to a pipe the
launcher reads before the step's request is published, ``-name`` once its answer arrived. The launcher
counts (steps of jobs running side by side overlap), starts a service whose count left zero, and asks one
whose count went back to zero to retire (``RETIRE``): it ends as soon as it holds no work (a request in hand
is finished first; one read meanwhile is served), and a service needed again meanwhile is started anew as
soon as it ended. A request published while its service starts waits in its Redis stream (its consumer
group reads from the stream's start), so nothing is lost or done twice.

In-process, in containers (``docker compose``) and in tests that run one service, nobody listens: ``need``
does nothing, and every service runs all the time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import Counter
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

RETIRE = signal.SIGUSR2  # launcher -> service: end once you hold no work
EAGER = ("monitor", "runner")  # started with the pilot; the runner retires once no payload needs it
ON_DEMAND = ("runner", "stager", "eventclient")  # retired when not needed, started again when needed

_fd: int | None = None  # the launcher's pipe, in the monitor's process only


def listen(fd: int | None) -> None:
    """This process's needs go to ``fd`` (the launcher's demand pipe); None: they go nowhere."""
    global _fd
    _fd = fd
    if fd is not None:
        os.set_blocking(fd, False)  # a launcher that stopped reading never blocks the monitor


def _say(sign: str, names: Iterable[str]) -> None:
    if _fd is None:
        return
    try:
        os.write(_fd, "".join(f"{sign}{name}\n" for name in names).encode())  # one write: atomic on a pipe
    except OSError as exc:  # a launcher gone, or not reading: the services that run go on running
        log.warning("cannot tell the launcher %s%s: %s", sign, ",".join(names), exc)


@contextlib.contextmanager
def need(*names: str) -> Iterator[None]:
    """``names`` run (or are started) while the block runs."""
    _say("+", names)
    try:
        yield
    finally:
        _say("-", names)


class DemandLedger:
    """The launcher's count of what the monitor needs now, fed with what it read from the demand pipe."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._partial = ""

    def feed(self, data: bytes) -> set[str]:
        """Count what ``data`` says; the names no longer needed after it (their count went back to zero)."""
        text = self._partial + data.decode(errors="replace")
        *lines, self._partial = text.split("\n")
        released = set()
        for line in lines:
            sign, name = line[:1], line[1:]
            if name not in ON_DEMAND or sign not in ("+", "-"):
                log.warning("demand pipe: %r ignored", line)
            elif sign == "+":
                self.counts[name] += 1
            elif self.counts[name] > 0:
                self.counts[name] -= 1
                if not self.counts[name]:
                    released.add(name)
        return {name for name in released if not self.counts[name]}

    def wanted(self, name: str) -> bool:
        return self.counts[name] > 0

    def forget(self) -> None:
        """The monitor ended (it is restarted): its needs went with it; the new one says its own."""
        self.counts.clear()
        self._partial = ""
