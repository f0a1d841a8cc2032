"""Bad input to every command: one line on stderr, never a traceback, the README's exit code, and it
is said before anything starts (no Redis, no service, nothing written)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot import exitcodes
from tests.e2e.conftest import NODEPILOT

OK_JOB = {"PandaID": 7301, "attemptNr": 1, "transformation": "true", "jobPars": ""}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def refused(tmp_path: Path, *args: str, code: int = exitcodes.USAGE, env: dict | None = None) -> str:
    import os

    result = subprocess.run([*NODEPILOT, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, **(env or {})})
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, lines)
    assert len(lines) == 1 and "Traceback" not in result.stderr, lines
    assert not list(tmp_path.glob("**/redis")) and not list(tmp_path.glob("**/*.sock"))  # nothing started
    return lines[0]


START = ("start", "--server", "http://127.0.0.1:1", "--workdir", "w", "--se-dir", "se")


@pytest.mark.parametrize(("args", "says"), [
    (("--heartbeat", "0"), "--heartbeat 0: must be between 0.25 and 86400 s"),
    (("--heartbeat", "-5"), "--heartbeat -5"),
    (("--heartbeat", "nan"), "--heartbeat nan"),
    (("--lifetime", "-1"), "--lifetime -1: must be between 1 and 31622400 s, or 0 for no limit"),
    (("--lifetime", "inf"), "--lifetime inf"),
    (("--max-jobs", "-1"), "--max-jobs -1: must be between 0 and 1000000"),
    (("--api", "bogus"), "unknown PanDA API dialect 'bogus'"),
])
def test_start_refuses_values_out_of_bounds(tmp_path: Path, args: tuple[str, ...], says: str):
    assert says in refused(tmp_path, *START, *args)


@pytest.mark.parametrize("url", ["ht!tp:/bad", "http://", "http://host:99999", "ftp://host/"])
def test_a_malformed_server_url_is_a_usage_error_not_an_unreachable_server(tmp_path: Path, url: str):
    line = refused(tmp_path, "start", "--server", url, "--workdir", "w", "--se-dir", "se")
    assert f"server URL {url!r}" in line


@pytest.mark.parametrize(("args", "says"), [
    (("--lifetime", "-5"), "--lifetime -5"),
    (("--workers", "0"), "--workers 0: must be between 1 and 1024"),
    (("--jumbo", "100000"), "--jumbo 100000: must be between 1 and 256"),
])
def test_frontend_refuses_values_out_of_bounds(tmp_path: Path, args: tuple[str, ...], says: str):
    assert says in refused(tmp_path, "frontend", "--server", "http://127.0.0.1:1", *args)


def test_serve_on_a_port_in_use(tmp_path: Path, busy_port: int):
    line = refused(tmp_path, "serve", "--jobs", "jobs", "--port", str(busy_port), code=exitcodes.SERVICES)
    assert line == f"nodepilot serve: cannot listen on 127.0.0.1:{busy_port}: Address already in use"


@pytest.mark.parametrize(("args", "says"), [
    (("--port", "99999"), "--port 99999: must be between 0 (a free port) and 65535"),
    (("--tls",), "TLS needs the server's certificate and key"),
    (("--tls", "--cert", "missing.pem", "--key", "missing.key", "--tokens", "tokens"),
     "cannot load the certificate missing.pem with the key missing.key: No such file or directory"),
    (("--tls", "--cert", "tokens", "--key", "tokens", "--tokens", "tokens"), "not a PEM certificate and its key"),
])
def test_serve_refuses_bad_options(tmp_path: Path, args: tuple[str, ...], says: str):
    (tmp_path / "tokens").write_text("a-token\n")
    assert says in refused(tmp_path, "serve", "--jobs", "jobs", *args)
    assert not (tmp_path / "jobs").exists()  # nothing was written


def test_serve_keeps_its_database_beside_the_jobs(tmp_path: Path):
    proc = subprocess.Popen([*NODEPILOT, "serve", "--jobs", "missing/jobs", "--port-file", "port"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from tests.waiting import wait_until
        wait_until(lambda: (tmp_path / "port").exists(), 30, "the server's port file")
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "missing" / "jobs" / "server.sqlite").is_file()
    assert not (tmp_path / "missing" / "server.sqlite").exists()


@pytest.mark.parametrize(("args", "env", "says"), [
    (("service", "bogus"), {}, "unknown service 'bogus'"),
    (("service", "runner"), {"NODEPILOT_REDIS_URL": ""}, "no configuration: give --config"),
    (("service", "runner", "--config", "missing.json"), {}, "cannot read the configuration missing.json"),
])
def test_service_refuses_what_it_cannot_run(tmp_path: Path, args: tuple[str, ...], env: dict, says: str):
    assert says in refused(tmp_path, *args, env=env)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p / "missing.json", "cannot read"),
    (lambda p: p, "is a directory: give its summary.json"),
    (lambda p: (p / "x.json").write_text("{no json") and p / "x.json", "not a pilot's summary (not JSON)"),
    (lambda p: (p / "x.json").write_text('{"a": 1}') and p / "x.json", "not a pilot's summary (not a list of jobs)"),
])
def test_summary_of_something_else_than_a_summary(tmp_path: Path, make, says: str):
    assert says in refused(tmp_path, "summary", str(make(tmp_path)))


@pytest.mark.parametrize(("content", "says"), [(None, "No such file or directory"), ("{not json", "Expecting")])
def test_run_refuses_an_unreadable_job_file_before_anything_starts(tmp_path: Path, content: str | None, says: str):
    if content is not None:
        (tmp_path / "job.json").write_text(content)
    line = refused(tmp_path, "run", "job.json", "--workdir", "w")
    assert line.startswith("nodepilot run: cannot read the job file job.json") and says in line
    assert not (tmp_path / "w").exists()


def test_a_work_dir_below_a_regular_file(tmp_path: Path):
    (tmp_path / "job.json").write_text(json.dumps(OK_JOB))
    (tmp_path / "file").write_text("")
    line = refused(tmp_path, "run", "job.json", "--workdir", "file/w")
    assert line.endswith(f"work dir {tmp_path / 'file' / 'w'}: not writable ({tmp_path / 'file'} is a file, "
                         "not a directory)")


def test_run_exits_non_zero_when_its_job_failed_and_says_what_runs_first(tmp_path: Path):
    (tmp_path / "ok.json").write_text(json.dumps(OK_JOB))
    (tmp_path / "fail.json").write_text(json.dumps({**OK_JOB, "PandaID": 7302, "transformation": "false"}))
    codes = {}
    for name in ("ok", "fail"):
        result = subprocess.run([*NODEPILOT, "run", f"{name}.json", "--workdir", name], capture_output=True,
                                text=True, timeout=120, cwd=tmp_path)
        codes[name] = result.returncode
        first = next(line for line in result.stderr.splitlines() if "nodepilot 0." in line)
        assert f"queue LOCAL_TEST, server none (job file {tmp_path / (name + '.json')})" in first
        assert "queue data: se-dir se" in first and "isolation " in first
    assert codes == {"ok": exitcodes.OK, "fail": exitcodes.JOB_FAILED}


def test_a_work_dir_that_cannot_be_written_fails_at_once(tmp_path: Path):
    """An existing work dir on a read-only file system (a real mount; we run as root): one line, exit 2,
    at once; and the standalone client does not retry an updates file it may not write."""
    import asyncio
    import time

    from nodepilot.panda.errors import ServerError
    from nodepilot.panda.standalone import StandaloneClient

    (tmp_path / "job.json").write_text(json.dumps(OK_JOB))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                             capture_output=True, text=True, timeout=10, check=False)
    assert mounted.returncode == 0, mounted.stderr
    try:
        t0 = time.monotonic()
        line = refused(tmp_path, "run", "job.json", "--workdir", "ro")
        assert time.monotonic() - t0 < 20
        assert line.endswith(f"work dir {readonly}: not writable (Read-only file system)")
        client = StandaloneClient(tmp_path / "job.json", readonly / "updates.jsonl")
        with pytest.raises(ServerError) as caught:
            asyncio.run(client.update_job({"jobId": 7301, "state": "running"}))
        assert caught.value.retryable is False  # a file that may not be written will not become writable
    finally:
        subprocess.run(["umount", "-l", str(readonly)], capture_output=True, timeout=10, check=False)
