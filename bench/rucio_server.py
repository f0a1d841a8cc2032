"""A real Rucio server on 127.0.0.1 for the Rucio mover tests and the stage-in bench.

Rucio (``RUCIO_VERSION`` from PyPI, with gunicorn) lives in a venv of its own, made on first use and
kept (``NODEPILOT_RUCIO_VENV``, default ``~/.cache/nodepilot/rucio-<version>``): its pinned dependencies
clash with the pilot's own, so it cannot share the pilot's venv. The server keeps its catalogue in
SQLite and runs under gunicorn with one worker and one thread (SQLite takes one writer); traces are
served (``/traces/``) and written to ``trace_file``. Like a production Rucio server it has a memcached
(Rucio's one shared cache backend: RSE attributes and protocols, configuration values...), here one of
its own on a Unix socket (Debian's ``memcached``, scripts/system-deps.sh); without it (not installed, or
``NODEPILOT_RUCIO_CACHE=none`` to compare) each of those lookups is an SQL query. Two RSEs: ``XRD_RSE``
on an XRootD server (the tests' ``XRootDServer``) and ``POSIX_RSE`` on a local directory, both
deterministic (hash paths).

``RucioServer.tool(command, args)`` runs ``rucio_tool.py`` with Rucio's own client, to seed replicas
and to check what the pilot registered, independently of the pilot's own Rucio client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.servers import StorageServer, XRootDServer, free_ports, running

RUCIO_VERSION = "41.5.1"
PACKAGES = [f"rucio=={RUCIO_VERSION}", "gunicorn"]
SCOPE = "tests"
USERNAME, PASSWORD = "ddmlab", "secret-for-tests"
TOOL = Path(__file__).with_name("rucio_tool.py")
INSTALL_TIMEOUT_S = 900
# alembic's environment reads logging sections from its ini file: warnings only, to stderr
ALEMBIC_LOGGING = ("[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n"
                   "[logger_root]\nlevel = WARN\nhandlers = console\n[handler_console]\nclass = StreamHandler\n"
                   "args = (sys.stderr,)\nformatter = generic\n[formatter_generic]\nformat = %%(message)s\n")


def venv_path() -> Path:
    return Path(os.environ.get("NODEPILOT_RUCIO_VENV") or Path.home() / ".cache" / "nodepilot" /
                f"rucio-{RUCIO_VERSION}")


def venv_ready() -> bool:
    return (venv_path() / ".installed").exists()


def rucio_venv() -> Path:
    """The venv with Rucio and gunicorn, made once (a lock keeps parallel sessions from racing)."""
    venv = venv_path()
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                            *PACKAGES], check=True, timeout=INSTALL_TIMEOUT_S)
            stamp.touch()
    return venv


class Memcached(StorageServer):
    """Rucio's cache: a memcached on a Unix socket in its own directory (as ``nobody`` when we are root:
    memcached refuses root), or None when memcached is not installed or ``NODEPILOT_RUCIO_CACHE=none``.
    A memcached is never shared between servers: a cache that outlives its database answers with stale ids."""

    name = "memcached"

    @classmethod
    def wanted(cls) -> Memcached | None:
        if os.environ.get("NODEPILOT_RUCIO_CACHE", "") == "none" or shutil.which("memcached") is None:
            return None
        return cls()

    def __init__(self) -> None:
        super().__init__()
        self.user = "nobody" if os.geteuid() == 0 else ""
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)  # memcached makes its socket after dropping root
        self.socket = self.base / "memcached.sock"
        self.url = f"unix:{self.socket}"

    def command(self) -> list[str]:
        user = ["-u", self.user] if self.user else []
        return ["memcached", "-s", str(self.socket), "-a", "0700", "-m", "64", *user]

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return bool(self.stats())
        return False

    def stats(self) -> dict[str, str]:
        """memcached's ``stats`` (``curr_items``, ``get_hits``...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"stats\r\n")
            answer = b""
            while not answer.endswith(b"END\r\n"):
                part = s.recv(65536)
                if not part:
                    break
                answer += part
        return {f[1]: f[2] for f in (line.split() for line in answer.decode().splitlines()) if len(f) == 3}


class RucioServer(StorageServer):
    """Rucio with its two RSEs; ``client_config`` is a Rucio client configuration file for the pilot.
    ``start()`` makes the schema and root account, starts gunicorn, then adds the RSEs (once only)."""

    name = "rucio"
    start_timeout = 60.0

    def __init__(self, xrootd: XRootDServer) -> None:
        super().__init__()
        self.venv = rucio_venv()
        self.python = self.venv / "bin" / "python"
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.xrootd = xrootd
        self.posix_dir = self.base / "posix-se"
        self.posix_dir.mkdir()
        self.trace_dir = self.base / "traces"
        self.trace_dir.mkdir()
        self.trace_file = self.trace_dir / "trace"
        self.server_config = self.base / "rucio-server.cfg"
        self.client_config = self.base / "rucio.cfg"
        self._set_up = False
        self.cache = Memcached.wanted()
        self._write_configs()

    # -- configuration ---------------------------------------------------------------------------
    def _write_configs(self) -> None:
        db = f"sqlite:///{self.base}/rucio.db"
        site = next(self.venv.glob("lib/python*/site-packages"))
        alembic = self.base / "alembic.ini"
        alembic.write_text(f"[alembic]\nscript_location = {site}/rucio/db/sqla/migrate_repo\nsqlalchemy.url = {db}\n"
                           + ALEMBIC_LOGGING)
        self.server_config.write_text(
            f"[common]\nloglevel = WARNING\n[database]\ndefault = {db}\n[alembic]\ncfg = {alembic}\n"
            f"[bootstrap]\nuserpass_identity = {USERNAME}\nuserpass_pwd = {PASSWORD}\n"
            f"userpass_email = ddmlab@localhost\n"
            "[policy]\npermission = generic\nschema = generic\nlfn2pfn_algorithm_default = hash\n"
            "[api]\nendpoints_add = traces\n"
            f"[trace]\ntracedir = {self.trace_dir}\nbrokers =\nport = 61013\ntopic = /topic/rucio.tracer\n"
            "username = none\npassword = none\n"
            "[monitor]\nenable_metrics = False\n"
            f"[cache]\nurl = {self.cache.url if self.cache else '127.0.0.1:1'}\n")  # 127.0.0.1:1: nothing there
        self.client_config.write_text(
            f"[client]\nrucio_host = {self.url}\nauth_host = {self.url}\nauth_type = userpass\n"
            f"username = {USERNAME}\npassword = {PASSWORD}\naccount = root\n"
            f"auth_token_file_path = {self.base}/token\n")

    def tool(self, command: str, args: dict[str, Any] | None = None, server: bool = False) -> Any:
        """``rucio_tool.py command`` in Rucio's venv (``server``: with the server's configuration)."""
        env = {**os.environ, "RUCIO_CONFIG": str(self.server_config if server else self.client_config)}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([str(self.python), str(TOOL), command], input=json.dumps(args or {}).encode(),
                              env=env, capture_output=True, timeout=120, cwd=self.base)
        if done.returncode:
            raise RuntimeError(f"rucio_tool {command} failed: {done.stderr.decode(errors='replace')[-3000:]}")
        return json.loads(done.stdout)

    # -- life cycle --------------------------------------------------------------------------------
    def command(self) -> list[str]:
        # env: the server's configuration, and none of the pilot's modules in its Python path
        return ["env", "-u", "PYTHONPATH", f"RUCIO_CONFIG={self.server_config}", str(self.venv / "bin" / "gunicorn"),
                "-b", f"127.0.0.1:{self.port}", "-w", "1", "--threads", "1", "--no-control-socket",
                "rucio.web.rest.flaskapi.v1.main:application"]

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/ping", timeout=2).status_code == 200
        return False

    def start(self) -> None:
        if self.cache is not None:
            self.cache.start()  # before the server: Rucio looks for its cache once, when it starts
        if self._set_up:
            super().start()
            return
        self.tool("bootstrap", server=True)
        super().start()
        xrd_path = "/" + self.xrootd.url.split("//", 2)[2].strip("/") + "/"
        self.tool("setup", {"scope": SCOPE, "rses": [
            {"name": "XRD_RSE", "scheme": "root", "hostname": "127.0.0.1", "port": self.xrootd.port,
             "prefix": f"/{xrd_path}", "impl": "rucio.rse.protocols.xrootd.Default"},
            {"name": "POSIX_RSE", "scheme": "file", "hostname": "localhost", "port": 0,
             "prefix": f"{self.posix_dir}/", "impl": "rucio.rse.protocols.posix.Default"}]})
        self._set_up = True

    def close(self) -> None:
        super().close()
        if self.cache is not None:
            self.cache.close()

    # -- catalogue and storage ---------------------------------------------------------------------
    def traces(self) -> list[dict[str, Any]]:
        """Every trace Rucio wrote to its trace file (one JSON object per line, after a time stamp)."""
        if not self.trace_file.exists():
            return []
        out = []
        for line in self.trace_file.read_text().splitlines():
            start = line.find("{")
            if start >= 0:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line[start:]))
        return out


@contextlib.contextmanager
def rucio_running() -> Iterator[RucioServer]:
    """An XRootD server and a Rucio server with its RSEs, stopped and removed on exit."""
    with running(XRootDServer) as xrootd:
        server = RucioServer(xrootd)  # type: ignore[arg-type]
        try:
            server.start()
            yield server
        finally:
            server.close()
