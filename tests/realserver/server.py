"""The PanDA server's configuration and its gunicorn process.

The configuration starts from the templates the server's wheel installs (``etc/panda/*.rpmnew``)
with the values a loopback test needs: the PostgreSQL back end, local CRIC files, plug-ins that
need no data management system, logs under the session's directory, no token authentication.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.realserver.database import DB, PASSWORD, USER, Cluster, free_port

HERE = Path(__file__).resolve().parent
DN = "/DC=org/DC=example/CN=nodepilot test pilot"  # the subject tests/panda/pki.py gives the pilot
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20


def _override(template: str, section: str, values: dict[str, str]) -> str:
    """``template`` with ``values`` set in ``section`` (replaced where present, added otherwise)."""
    out, current, pending = [], "", dict(values)
    for line in template.splitlines():
        header = re.match(r"\s*\[(\w+)\]", line)
        if header:
            if current == section:
                out += [f"{k} = {v}" for k, v in pending.items()]
                pending = {}
            current = header.group(1)
        else:
            key = re.match(r"([A-Za-z_][\w-]*)\s*=", line)
            if current == section and key and key.group(1) in values:
                if key.group(1) in pending:
                    out.append(f"{key.group(1)} = {pending.pop(key.group(1))}")
                continue
        out.append(line)
    if pending:
        out += [f"[{section}]"] if current != section else []
        out += [f"{k} = {v}" for k, v in pending.items()]
    return "\n".join(out) + "\n"


@dataclass
class PandaHome:
    """``$PANDA_HOME``: etc/panda (configuration), log/, cache/ and the CRIC files."""

    root: Path
    venv: Path
    http_port: int = field(default_factory=free_port)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def cric_dir(self) -> Path:
        return self.root / "cric"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self, db: Cluster) -> None:
        etc = self.root / "etc" / "panda"
        for d in (etc, self.log_dir, self.root / "cache", self.cric_dir):
            d.mkdir(parents=True, exist_ok=True)
        templates = self.venv / "etc" / "panda"
        cric = {name: str(self.cric_dir / f"{name.lower()}.json") for name in
                ("SITES", "DDMENDPOINTS", "SCHEDCONFIG", "DDMBLACKLIST", "DDMBLACKLIST_READ", "DDMBLACKLIST_FULL")}
        server = {
            "logdir": str(self.log_dir), "cache_dir": str(self.root / "cache"), "home_dir_cwd": str(self.root),
            "backend": "postgres", "dbhost": "127.0.0.1", "dbport": str(db.port), "dbuser": USER,
            "dbpasswd": PASSWORD, "dbname": DB, "nDBConnection": "1", "token_authType": "None",
            # no database bridge processes: their clean-up sleeps up to 17 s per connection at exit
            "usedbtimeout": "False",
            "pserverhost": "127.0.0.1", "pserverhosthttp": "127.0.0.1", "pserverport": str(self.http_port),
            "pserverporthttp": str(self.http_port), "pserveralias": "127.0.0.1", "keyDir": str(self.root / "keys"),
            "certdir": str(self.root / "keys"), "production_dns": DN,
            "adder_plugins": "any:pandaserver.dataservice.adder_dummy_plugin:AdderDummyPlugin",
            "setupper_plugins": "any:pandaserver.dataservice.setupper_dummy_plugin:SetupperDummyPlugin",
            "closer_plugins": "", "endpoint_mapfile": "", "RUCIO_RSE_USAGE": str(self.cric_dir / "rse_usage.json"),
            "configurator_use_cert": "False",
            **{f"CRIC_URL_{name}": path for name, path in cric.items()},
        }
        text = _override((templates / "panda_server.cfg.rpmnew").read_text(), "server", server)
        (etc / "panda_server.cfg").write_text(_override(text, "daemon", {"enable": "False"}))
        common = {"logdir": str(self.log_dir), "loghost": "127.0.0.1", "loghost_new": "127.0.0.1",
                  "monport-apache": "9", "monport-apache_new": "9"}
        (etc / "panda_common.cfg").write_text(
            _override((templates / "panda_common.cfg.rpmnew").read_text(), "logger", common))

    def env(self) -> dict[str, str]:
        """The environment of every server-side process (gunicorn, configurator, Adder, submitter)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "X509_"))}
        env.update({
            "PANDA_HOME": str(self.root), "PANDA_BEHIND_REAL_LB": "1", "TZ": "UTC",
            "PANDA_URL": f"{self.url}/server/panda", "PANDA_URL_SSL": f"{self.url}/server/panda",
            "PANDA_API_URL": f"{self.url}/api/v1", "PANDA_API_URL_SSL": f"{self.url}/api/v1",
            "PANDACACHE_URL": f"{self.url}/server/panda", "PANDA_VERIFY_HOST": "off",
            "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        })
        return env

    def run(self, script: str, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        """One of this directory's server-side scripts, in the server's venv; returns its stdout.

        The server's code forks helpers (database bridges, a multiprocessing manager) that outlive
        the script by a minute: the script runs in a process group of its own, its output goes to
        files (a pipe would stay open as long as any helper lives), and the group is ended after it.
        """
        out, err = (self.log_dir / f"{Path(script).stem}.{kind}" for kind in ("stdout", "stderr"))
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen([str(self.python), str(HERE / script), *args], stdin=subprocess.PIPE,
                                    stdout=stdout, stderr=stderr, text=True, env=self.env(), cwd=self.root,
                                    start_new_session=True)
            try:
                proc.communicate(stdin, timeout=timeout)
            finally:
                _end_group(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{script} {' '.join(args)}: exit {proc.returncode}\n{err.read_text()[-4000:]}")
        return out.read_text()


def _end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a process group we started (its leader may have exited already)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@dataclass
class Tls:
    """The server's certificate and key, the CA it trusts for clients, and a client's (to probe it)."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path


@dataclass
class Gunicorn:
    """The server under gunicorn on 127.0.0.1: plain HTTP, or TLS that demands a client certificate."""

    home: PandaHome
    port: int
    tls: Tls | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [str(self.home.venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "2",
                "--timeout", "300", "--graceful-timeout", "5", "--chdir", str(HERE),
                "--error-logfile", str(self.home.log_dir / f"gunicorn-{self.port}.log")]
        env = self.home.env()
        if self.tls:
            args += ["--certfile", str(self.tls.cert), "--keyfile", str(self.tls.key), "--ca-certs", str(self.tls.ca),
                     "--cert-reqs", "2"]
            env["REALSERVER_TLS"] = "1"
        env["REALSERVER_DN"] = DN
        log = (self.home.log_dir / f"gunicorn-{self.port}.out").open("ab")
        self.process = subprocess.Popen([*args, "wsgi_wrapper:application"], env=env, cwd=self.home.root,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the server answers is_alive (over TLS: with the client certificate)."""
        verify: ssl.SSLContext | bool = True
        if self.tls:
            verify = ssl.create_default_context(cafile=str(self.tls.ca))
            verify.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.process.returncode}: see {self.home.log_dir}")
            try:
                if httpx.get(f"{self.url}/api/v1/system/is_alive", timeout=30, verify=verify).status_code == 200:
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the PanDA server did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
