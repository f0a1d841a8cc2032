"""The queue's ``copysetup``: shell set-up for the movers (X509_*, XRD_*, S3/AWS_* variables...).

It is sourced once, in a bash subshell with a bounded time-out, and the variables it sets or changes
are written into the stager's own environment before the first transfer: the movers (Python clients
that read the environment, and any tool they spawn) see them with no change to the mover interface.
The outcome, good or bad, is cached for the life of the stager process; a broken set-up fails every
transfer with ``SETUP_FAILED`` (1110) and says why.

``copysetup`` is either the path of a script (sourced) or shell text (run as is).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal

# bash's own bookkeeping, not set-up
IGNORED = frozenset({"_", "SHLVL", "PWD", "OLDPWD", "LINES", "COLUMNS"})
OUTPUT_LIMIT = 300


class CopysetupError(Exception):
    pass


def script_of(setup: str) -> str:
    """The bash text for ``setup``: its variables reach ``env -0``, its own output goes to stderr."""
    text = setup.strip()
    if text.startswith("/") and not any(c.isspace() or c == ";" for c in text):
        if not os.path.isfile(text):
            raise CopysetupError(f"copysetup script {text} not found")
        text = f"source {shlex.quote(text)}"
    return f"{{\n{text}\n}} >&2 </dev/null\nrc=$?\n[ $rc -eq 0 ] || exit $rc\nexec env -0\n"


async def sourced_env(setup: str, timeout_s: float) -> dict[str, str]:
    """The variables that sourcing ``setup`` sets or changes, compared with this process's environment."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "--noprofile", "--norc", "-c", script_of(setup), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise CopysetupError(f"copysetup did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
        raise CopysetupError(f"copysetup exited with {proc.returncode}: {tail or 'no output'}")
    env = dict(item.split("=", 1) for item in out.decode(errors="replace").split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k not in IGNORED and os.environ.get(k) != v}


class Copysetup:
    """Applies a copysetup once per process; every caller gets the same outcome."""

    def __init__(self, setup: str, timeout_s: float) -> None:
        self.setup, self.timeout_s = setup, timeout_s
        self.applied: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._done = False
        self._error = ""

    async def ensure(self) -> None:
        """Raise CopysetupError if the set-up is broken; apply it first if not done yet."""
        if not self.setup.strip():
            return
        async with self._lock:
            if not self._done:
                try:
                    self.applied = await sourced_env(self.setup, self.timeout_s)
                    os.environ.update(self.applied)
                except CopysetupError as exc:
                    self._error = str(exc)
                except OSError as exc:
                    self._error = f"copysetup could not be run: {exc}"
                self._done = True
        if self._error:
            raise CopysetupError(self._error)

    def view(self) -> dict[str, object]:
        """For /status: whether it ran, and the names (not the values: they may be secrets) it set."""
        if not self.setup.strip():
            state = "none"
        else:
            state = "failed" if self._error else "applied" if self._done else "pending"
        return {"state": state, "variables": sorted(self.applied), "error": self._error}
