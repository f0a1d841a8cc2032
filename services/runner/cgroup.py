"""A cgroup v2 subtree per payload, where one is delegated to us.

A process cannot leave its cgroup by itself (setsid and double forks do not help), so the
payload's cgroup lists every process it ever started, and ``cgroup.kill`` ends them all at
once. Without a writable cgroup v2 the runner falls back to tracking descendants.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "nodepilot-"
LEFTOVER_AGE_S = 60.0


def _own_cgroup_dir() -> Path | None:
    """Our cgroup v2 directory: the ``0::`` line of /proc/self/cgroup under the cgroup2 mount."""
    try:
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for mount in mounts:
        fields = mount.split()
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
            root, point = fields[3], fields[4]
            relative = line[3:]
            if relative == root or relative.startswith(root.rstrip("/") + "/"):
                return Path(point) / relative[len(root):].lstrip("/")
    return None


@functools.cache
def delegated_base() -> Path | None:
    """Our own cgroup if we may create children in it and move processes there, else None."""
    base = _own_cgroup_dir()
    if base is None or os.environ.get("NODEPILOT_NO_CGROUP"):
        return None
    probe = base / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        log.info("no delegated cgroup v2 (%s): payload processes are tracked as descendants", exc)
        return None
    log.info("payloads run in cgroup v2 subtrees under %s", base)
    return base


class PayloadCgroup:
    """One payload's cgroup: the payload's shim joins it before the payload runs a single instruction of its own
    (services/runner/execute.py: the shim writes to ``procs``, so the runner forks with no Python hook)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs = path / "cgroup.procs"

    @classmethod
    def create(cls, job_id: int) -> PayloadCgroup | None:
        base = delegated_base()
        if base is None:
            return None
        path = base / f"{PREFIX}{job_id}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            return cls(path)
        except OSError as exc:
            log.warning("job %s: cannot make a cgroup for the payload (%s); tracking descendants", job_id, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def signal(self, signum: int) -> None:
        if signum == signal.SIGKILL and self._write("cgroup.kill", "1"):
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def oom_kills(self) -> int:
        """Processes of this cgroup the kernel's OOM killer ended (0 without a memory controller)."""
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def populated(self) -> bool:
        try:
            return "populated 1" in (self.path / "cgroup.events").read_text()
        except OSError:
            return False

    def remove(self) -> bool:
        """Remove the (empty) cgroup; False while processes are still in it."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def _write(self, name: str, text: str) -> bool:
        try:
            (self.path / name).write_text(text)
        except OSError:
            return False
        return True


def remove_empty_leftovers(min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Remove the payload cgroups under our base that no process is in and that are older than ``min_age_s``
    (left by a runner that was killed; a younger one may be another runner's, about to be joined). Those with
    processes stay (a payload that may be adopted). Returns those removed."""
    base = delegated_base()
    removed: list[Path] = []
    if base is None:
        return removed
    now = time.time()
    for path in base.glob(f"{PREFIX}*"):
        try:
            if now - path.stat().st_mtime < min_age_s:
                continue
            path.rmdir()  # fails (EBUSY) while a process is in it
        except OSError:
            continue
        removed.append(path)
    if removed:
        log.info("removed %d empty payload cgroups left behind: %s", len(removed), ", ".join(p.name for p in removed))
    return removed
