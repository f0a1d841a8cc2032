"""A server that refuses the pilot as it is configured: one clear line and exit code 6
(``exitcodes.REFUSED``), never a service that dies and is restarted, never "unreachable" (3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot import exitcodes
from tests.conftest import stop_process
from tests.e2e.conftest import JobServer, add_jobs, run_pilot, start_job_server
from tests.panda.pki import Pki, make_pki

JOB = {"PandaID": 6001, "attemptNr": 1, "transformation": "/bin/true", "jobPars": ""}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or " WARNING " in line or "Traceback" in line]


@pytest.fixture
def serve(site: Path) -> Iterator[list[JobServer]]:
    started: list[JobServer] = []
    yield started
    for server in started:
        stop_process(server.process)


def test_a_server_without_the_legacy_api(site: Path, serve: list[JobServer]):
    add_jobs(site, JOB)
    server = start_job_server(site / "jobs", site, "--no-legacy")
    serve.append(server)
    result = run_pilot(site, server.url, "--api", "legacy", timeout=60)
    assert result.returncode == exitcodes.REFUSED, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "no legacy API" in lines[0] and "--api v1" in lines[0] and "credential" not in lines[0]
    assert server.jobs() == {}  # nothing was handed out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_server_that_requires_a_client_certificate(site: Path, serve: list[JobServer], pki: Pki,
                                                     monkeypatch: pytest.MonkeyPatch):
    add_jobs(site, JOB)
    server = start_job_server(site / "jobs", site, "--tls", "--require-cert", "--cert", str(pki.server.cert),
                              "--key", str(pki.server.key), "--ca", str(pki.ca.cert))
    serve.append(server)
    for name in ("X509_USER_PROXY", "PANDA_AUTH_TOKEN", "PANDA_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    result = run_pilot(site, server.url, timeout=60)
    assert result.returncode == exitcodes.REFUSED, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "requires a client certificate" in lines[0] and "X509_USER_PROXY" in lines[0]
    assert "restarting" not in result.stderr and "died" not in result.stderr

    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))  # the same pilot with a certificate
    result = run_pilot(site, server.url, timeout=120)
    assert result.returncode == exitcodes.OK, result.stderr[-3000:]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_told_at_once_and_costs_the_acquisition_budget(site: Path):
    import time

    t0 = time.monotonic()
    result = run_pilot(site, f"http://127.0.0.1:{_closed_port()}", timeout=90)
    took = time.monotonic() - t0
    assert result.returncode == exitcodes.SERVER, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    # told at once: the node's report and the first attempt, side by side (either may be said first)
    report, first = sorted(lines[:2], key=lambda line: "worker report" not in line)
    assert "worker report (started) not delivered" in report and "ConnectError" in report, lines
    assert "acquire_jobs: ConnectError" in first and "attempt 1 of 4" in first and "budget" in first, lines
    assert "could not get a job" in lines[-1] and len(lines) == 5, lines  # 3 retries, then the end
    assert took < 40, f"{took:.0f} s"  # 4 attempts, pauses of 1-2, 2-4 and 4-8 s, plus the pilot's start


def test_a_web_server_that_is_not_panda_ends_at_once_saying_what_answered(site: Path):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(BaseHTTPRequestHandler):  # no do_POST: "501 Unsupported method", as a plain web server
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        result = run_pilot(site, f"http://127.0.0.1:{server.server_address[1]}", timeout=90)
        took = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == exitcodes.SERVER, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "HTTP 501" in lines[0] and "not a PanDA server" in lines[0] and "BaseHTTP" in lines[0], lines
    assert took < 30, f"{took:.0f} s"


def test_a_stager_setting_that_is_not_valid_is_said_once_per_pilot(site: Path, job_server: JobServer):
    """The stager starts for each stage step (nodepilot/demand.py) and reads its settings each time: what is
    wrong with them is said by its first start only."""
    from tests.e2e.conftest import EXAMPLES, write_queuedata

    add_jobs(site, EXAMPLES / "jobs" / "02_merge_inputs.json")  # inputs, outputs and a log: several stagers
    queue = write_queuedata(site, stager={"attempts": 50})
    result = run_pilot(site, job_server.url, "--queuedata", queue)
    assert result.returncode == exitcodes.OK, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "stager setting attempts=50 is not valid" in line]
    assert len(said) == 1, result.stderr[-3000:]
