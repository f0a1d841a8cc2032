"""A server that demands a TLS client certificate (gunicorn with ``cert_reqs``, as Apache's
``SSLVerifyClient require``): the pilot with a proxy gets and finishes the job; without one it
stops with the "server unreachable" exit code and one clear line, and the job stays untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot import exitcodes
from tests.panda.pki import Pki, make_pki
from tests.realserver import jobs, pilot
from tests.realserver.harness import RealServer
from tests.realserver.server import Gunicorn, Tls


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_server(server: RealServer, pki: Pki) -> Iterator[Gunicorn]:
    https = server.tls_server(Tls(pki.server.cert, pki.server.key, pki.ca.cert, pki.client.cert, pki.client.key))
    yield https
    https.stop()


def test_with_client_certificate(server, tls_server, pki, site, record):
    (panda_id,) = server.submit(jobs.job("np.tls", "bash", "-c 'echo over TLS > np.tls.out.txt'",
                                         outputs=("np.tls.out.txt",)))
    run = pilot.run(site, tls_server.url, "--max-jobs", "1",
                    env={"X509_USER_PROXY": str(pki.client.proxy), "X509_CERT_FILE": str(pki.ca.cert)})
    server.adder_pass()
    job = server.job(panda_id)
    record(f"{job.get('table')} {job.get('jobstatus')}", run)

    assert run.exit_code == 0, run.output[-3000:]
    assert (job["table"], job["jobstatus"]) == ("jobsarchived4", "finished"), job


def test_without_client_certificate(server, tls_server, pki, site, record):
    (panda_id,) = server.submit(jobs.job("np.nocert", "bash", "-c 'echo should not run'"))
    run = pilot.run(site, tls_server.url, "--max-jobs", "1", env={"X509_CERT_FILE": str(pki.ca.cert)}, timeout=120)
    job = server.job(panda_id)
    record(f"{job.get('table')} {job.get('jobstatus')} (untouched)", run)

    assert run.exit_code == exitcodes.REFUSED, run.output[-3000:]  # the server refused, not unreachable
    assert "certificate required" in run.output.lower(), run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    assert (job["table"], job["jobstatus"]) == ("jobsactive4", "activated"), job
