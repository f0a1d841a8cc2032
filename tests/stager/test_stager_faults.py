"""Faults through a real stager process: a full local disk, a storage server down then back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot.config import PilotConfig
from services.stager.paths import deterministic_path
from tests.conftest import running_service
from tests.stager.test_stager_service import answer, in_file, out_file, put_on_se, send, workdir

RETRY_FAST = {"attempts": 8, "backoff_s": 0.3, "backoff_cap_s": 1.0}


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    """A real file system of ``size`` mounted on ``path`` (we run as root here)."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no real way to fill a disk safely")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, check=False)


def test_a_full_local_disk_on_stage_in_is_1098(rds, pilot_config):
    data = os.urandom(3 << 20)
    put_on_se(pilot_config, "demo.data", "big.dat", data)
    wd = workdir(pilot_config, 91)
    with small_tmpfs(wd, "1m"), running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 91, "91:1:stagein", files=[in_file("big.dat", data)])
        event = answer(rds, 91, "stagein")
        left = sorted(p.name for p in wd.iterdir())
    assert event["ok"] is False and event["error_code"] == 1098, event
    assert "no space left on device" in event["diag"].lower() and event["files"][0]["attempts"] == 1
    assert left == []  # the partial copy was removed


def start_later(server, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), server.start()), daemon=True)
    thread.start()
    return thread


def endpoint(server) -> dict[str, str]:
    return {"name": f"{server.name.upper()}_SE", "url": server.url}


def retried_ok(event: dict) -> dict:
    f = event["files"][0]
    assert event["ok"] is True, event
    assert f["attempts"] >= 2 and "succeeded at attempt" in f["diag"], f
    return f


@pytest.mark.timeout(60)
def test_webdav_server_down_then_back_the_retry_succeeds(rds, pilot_config: PilotConfig, webdav_server):
    data = b"replica bytes " * 1000
    webdav_server.put(deterministic_path("demo.data", "w.dat"), data)
    pilot_config.queuedata.stager = RETRY_FAST
    with running_service("stager", pilot_config):
        webdav_server.stop()
        send(rds, pilot_config, "stagein", 92, "92:1:stagein", endpoints=[endpoint(webdav_server)],
             files=[in_file("w.dat", data)])
        start_later(webdav_server, 1.0).join(15)
        f = retried_ok(answer(rds, 92, "stagein"))
    assert (workdir(pilot_config, 92) / "w.dat").read_bytes() == data
    assert "WEBDAV_SE" in f["diag"]


@pytest.mark.timeout(60)
def test_xrootd_server_down_then_back_the_retry_succeeds(rds, pilot_config: PilotConfig, xrootd_server):
    (workdir(pilot_config, 93) / "x.out").write_bytes(b"output bytes " * 1000)
    pilot_config.queuedata.stager = RETRY_FAST
    with running_service("stager", pilot_config):
        xrootd_server.stop()
        send(rds, pilot_config, "stageout", 93, "93:1:stageout", endpoints=[endpoint(xrootd_server)],
             files=[out_file("x.out")])
        start_later(xrootd_server, 1.0).join(15)
        retried_ok(answer(rds, 93, "stageout"))
    assert xrootd_server.read(deterministic_path("demo.output", "x.out")) == b"output bytes " * 1000


def test_primary_refusing_writes_the_alternative_server_is_used(rds, pilot_config: PilotConfig, tmp_path,
                                                                 webdav_server):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file: no directory can be made under it (chmod does not stop root)")
    (workdir(pilot_config, 94) / "r.out").write_bytes(b"result")
    pilot_config.queuedata.allow_alt_stageout = True
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 94, "94:1:stageout", files=[out_file("r.out")],
             endpoints=[{"name": "BROKEN_SE", "url": (blocker / "se").as_uri()}, endpoint(webdav_server)])
        event = answer(rds, 94, "stageout")
    f = event["files"][0]
    assert event["ok"] is True and f["endpoint"] == "WEBDAV_SE" and f["attempts"] == 2
    assert f["diag"].startswith("primary endpoint BROKEN_SE: ") and "Not a directory" in f["diag"]
    assert f["diag"].endswith("stored on alternative endpoint WEBDAV_SE")
    assert webdav_server.read(deterministic_path("demo.output", "r.out")) == b"result"

