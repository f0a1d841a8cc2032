"""The local job server started for real (``nodepilot serve``) for tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import stop_process

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass
class Server:
    url: str
    db_path: Path
    proc: subprocess.Popen
    log_path: Path

    def post(self, method: str, body: Any = None, headers: dict[str, str] | None = None,
             content: bytes | None = None, data: dict[str, str] | None = None, module: str = "pilot") -> httpx.Response:
        if content is None and data is None:
            content = json.dumps(body).encode()
        return httpx.post(f"{self.url}/api/v1/{module}/{method}", content=content, data=data,
                          headers=JSON_HEADERS if headers is None else headers, timeout=10)

    def call(self, method: str, body: dict[str, Any], module: str = "pilot") -> dict[str, Any]:
        reply = self.post(method, body, module=module)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def jobs(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/jobs", timeout=10).json()

    def ranges(self, panda_id: int) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/jobs/{panda_id}/ranges", timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def stop_and_read_log(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        return self.log_path.read_text()


def write_jobs(jobs_dir: Path, **files: Any) -> Path:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (jobs_dir / f"{name}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return jobs_dir


@contextlib.contextmanager
def serving(jobs_dir: Path, db_path: Path, *options: str, timeout: float = 30) -> Iterator[Server]:
    """Run the server on 127.0.0.1 and a free port until the block ends (every wait bounded)."""
    port_file = jobs_dir.parent / "port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "nodepilot", "serve", "--jobs", str(jobs_dir), "--db", str(db_path),
               "--port-file", str(port_file), *options]
    log_path = jobs_dir.parent / "server.log"
    with log_path.open("w") as log_file:  # a file, not a pipe: a chatty server never blocks on it
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no port file within {timeout} s")
            time.sleep(0.02)
        scheme = "https" if "--tls" in options else "http"
        yield Server(f"{scheme}://127.0.0.1:{int(port_file.read_text())}", db_path, proc, log_path)
    finally:
        stop_process(proc)
