"""TLS and authentication for real: a throwaway CA, the job server on 127.0.0.1 with ``--tls``, and
both clients with X.509 proxies and bearer tokens taken from the environment at each call."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nodepilot.panda.api_v1 import ApiV1Client, tls_context
from nodepilot.panda.auth import current_credentials
from nodepilot.panda.errors import ServerError
from nodepilot.panda.legacy import LegacyClient
from tests.panda.mock import BASE, Recorder, run, text
from tests.panda.pki import Pki, make_pki
from tests.panda.serving import Server, serving, write_jobs

AUTH_VARIABLES = ("X509_USER_PROXY", "X509_CERT_DIR", "X509_CERT_FILE", "PANDA_AUTH_TOKEN", "PANDA_AUTH_TOKEN_FILE",
                  "PANDA_AUTH_DIR", "PANDA_AUTH_VO", "PANDA_AUTH_ORIGIN")
GOOD_TOKEN = "eyJhbGciOiJIUzI1NiJ9.good-pilot-token"
JOBS = [{"PandaID": n, "attemptNr": 1, "transformation": "run.sh", "jobPars": ""} for n in range(1, 21)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def tls_server(directory: Path, pki: Pki, cert: Any = None) -> Iterator[tuple[Server, Path]]:
    tokens = directory / "tokens.txt"
    tokens.write_text(f"# accepted pilot tokens\n{GOOD_TOKEN}\n\n")
    cert = cert or pki.server
    with serving(write_jobs(directory / "jobs", a=JOBS), directory / "server.sqlite", "--tls",
                 "--cert", str(cert.cert), "--key", str(cert.key), "--ca", str(pki.ca.cert),
                 "--tokens", str(tokens)) as server:
        yield server, tokens


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with tls_server(tmp_path_factory.mktemp("tls-server"), pki) as running:
        yield running


def acquire(url: str, client_class: type = ApiV1Client, **kwargs: Any) -> dict[str, Any] | None:
    async def once() -> dict[str, Any] | None:
        client = client_class(url, timeout=10, retries=1, backoff_s=0.01, **kwargs)
        try:
            return await client.acquire_job({"siteName": "LOCAL_TEST", "node": "wn01"})
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(once(), 60))


def refused(url: str, client_class: type = ApiV1Client, **kwargs: Any) -> ServerError:
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        acquire(url, client_class, **kwargs)
    assert not err.value.retryable, err.value
    assert time.monotonic() - started < 30
    return err.value


# --- client certificates ---------------------------------------------------------------------------
@pytest.mark.parametrize("client_class", [ApiV1Client, LegacyClient])
def test_a_client_certificate_from_the_ca_is_accepted(secured: tuple[Server, Path], pki: Pki,
                                                      monkeypatch: pytest.MonkeyPatch, client_class: type):
    server, _ = secured
    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    assert acquire(server.url, client_class)["PandaID"] in range(1, 21)


def test_the_ca_directory_and_a_ca_file_given_to_the_client(secured: tuple[Server, Path], pki: Pki,
                                                             monkeypatch: pytest.MonkeyPatch):
    server, _ = secured
    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))
    monkeypatch.setenv("X509_CERT_DIR", str(pki.ca.hashed_dir()))
    assert acquire(server.url) is not None
    monkeypatch.delenv("X509_CERT_DIR")
    assert acquire(server.url, LegacyClient, ca_file=str(pki.ca.cert)) is not None


@pytest.mark.parametrize("client_class", [ApiV1Client, LegacyClient])
def test_a_client_certificate_from_another_ca_is_refused(secured: tuple[Server, Path], pki: Pki,
                                                         monkeypatch: pytest.MonkeyPatch, client_class: type):
    server, _ = secured
    monkeypatch.setenv("X509_USER_PROXY", str(pki.rogue_client.proxy))
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    error = refused(server.url, client_class)
    assert "refused the client certificate" in str(error) and str(pki.rogue_client.proxy) in str(error)


def test_a_renewed_proxy_is_used_at_the_next_call(secured: tuple[Server, Path], pki: Pki, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    server, _ = secured
    proxy = tmp_path / "x509up_u1000"
    proxy.write_text(pki.rogue_client.proxy.read_text())
    monkeypatch.setenv("X509_USER_PROXY", str(proxy))
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))

    async def two_calls() -> tuple[ServerError, Any]:
        client = ApiV1Client(server.url, timeout=10, retries=0)
        try:
            with pytest.raises(ServerError) as first:
                await client.acquire_job({"siteName": "Q"})
            renewed = tmp_path / "x509up.new"
            renewed.write_text(pki.client.proxy.read_text())
            renewed.replace(proxy)  # as a renewal replaces the file
            return first.value, await client.acquire_job({"siteName": "Q"})
        finally:
            await client.aclose()

    first, job = asyncio.run(asyncio.wait_for(two_calls(), 60))
    assert not first.retryable and job is not None


def test_a_server_certificate_from_an_unknown_ca_is_refused(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    with tls_server(tmp_path, pki, cert=pki.rogue_server) as (server, _):
        for client_class in (ApiV1Client, LegacyClient):
            error = refused(server.url, client_class)
            assert "server's certificate was not accepted" in str(error) and str(pki.ca.cert) in str(error)


# --- tokens ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("client_class", [ApiV1Client, LegacyClient])
def test_a_listed_token_is_accepted_and_another_refused(secured: tuple[Server, Path], pki: Pki,
                                                        monkeypatch: pytest.MonkeyPatch, client_class: type):
    server, _ = secured
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    monkeypatch.setenv("PANDA_AUTH_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("PANDA_AUTH_VO", "atlas")
    assert acquire(server.url, client_class) is not None
    monkeypatch.setenv("PANDA_AUTH_TOKEN", "eyJhbGciOiJIUzI1NiJ9.stolen")
    error = refused(server.url, client_class)
    assert "refused the bearer token from PANDA_AUTH_TOKEN (Origin: atlas)" in str(error)
    assert "HTTP 403" in str(error) and "ERROR : Token authentication failed. Invalid token" in str(error)


def test_a_bad_token_is_refused_even_with_a_good_certificate(secured: tuple[Server, Path], pki: Pki,
                                                              monkeypatch: pytest.MonkeyPatch):
    """As on panda-server: a token sent is checked whatever the connection's certificate."""
    server, _ = secured
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))
    monkeypatch.setenv("PANDA_AUTH_TOKEN", "not-listed")
    error = refused(server.url, LegacyClient)
    assert f"the X.509 proxy X509_USER_PROXY={pki.client.proxy} and the bearer token from PANDA_AUTH_TOKEN" in str(
        error)
    monkeypatch.setenv("PANDA_AUTH_TOKEN", GOOD_TOKEN)
    assert acquire(server.url, LegacyClient) is not None


def test_no_credential_is_refused(secured: tuple[Server, Path], pki: Pki, monkeypatch: pytest.MonkeyPatch):
    server, _ = secured
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    error = refused(server.url)
    assert "no credential" in str(error) and "No client certificate and no bearer token" in str(error)
    verify = ssl.create_default_context(cafile=str(pki.ca.cert))
    reply = httpx.get(f"{server.url}/jobs", verify=verify, timeout=10)  # the listing is guarded too
    assert (reply.status_code, reply.headers["content-type"].split(";")[0]) == (403, "text/plain")
    assert reply.text == "ERROR : Token authentication failed. No client certificate and no bearer token"


def test_a_rewritten_token_file_is_read_at_each_call(secured: tuple[Server, Path], pki: Pki, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    server, tokens = secured
    token_file = tmp_path / "token"
    token_file.write_text(GOOD_TOKEN + "\n")
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    monkeypatch.setenv("PANDA_AUTH_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("PANDA_AUTH_ORIGIN", "atlas.pilot")

    async def calls() -> list[Any]:
        client = LegacyClient(server.url, timeout=10, retries=0)
        results: list[Any] = []
        try:
            for token in (GOOD_TOKEN, "expired-token", "renewed-token"):
                token_file.write_text(token)
                if token == "renewed-token":
                    tokens.write_text(tokens.read_text() + "renewed-token\n")  # the server learns of it
                try:
                    results.append(await client.acquire_job({"siteName": "Q"}))
                except ServerError as exc:
                    results.append(exc)
        finally:
            await client.aclose()
        return results

    good, expired, renewed = asyncio.run(asyncio.wait_for(calls(), 60))
    assert isinstance(good, dict) and isinstance(renewed, dict)
    assert isinstance(expired, ServerError) and not expired.retryable
    assert f"PANDA_AUTH_TOKEN_FILE={token_file}" in str(expired)


# --- what is sent, without a server ------------------------------------------------------------------
def test_token_headers_and_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rec = Recorder(text(b'{"success": false, "message": "No jobs in PanDA", "data": null}'))
    monkeypatch.setenv("PANDA_AUTH_TOKEN", "t1")
    monkeypatch.setenv("PANDA_AUTH_ORIGIN", "atlas.pilot")
    run(rec.client().acquire_job({"siteName": "Q"}))
    monkeypatch.setenv("PANDA_AUTH_VO", "atlas")  # preferred to PANDA_AUTH_ORIGIN
    (tmp_path / "token-file").write_text("t2\n")
    monkeypatch.setenv("PANDA_AUTH_DIR", str(tmp_path))
    monkeypatch.setenv("PANDA_AUTH_TOKEN", "token-file")  # as harvester sets it: a file in PANDA_AUTH_DIR
    run(rec.client().acquire_job({"siteName": "Q"}))
    sent = [(r.headers["Authorization"], r.headers["Origin"]) for r in rec.requests]
    assert sent == [("Bearer t1", "atlas.pilot"), ("Bearer t2", "atlas")]


def test_unreadable_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rec = Recorder(text(b""))
    monkeypatch.setenv("PANDA_AUTH_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ServerError, match="cannot read the token file") as err:
        run(rec.client(retries=0).acquire_job({"siteName": "Q"}))
    assert err.value.retryable  # a token being renewed may be back at the next attempt
    monkeypatch.delenv("PANDA_AUTH_TOKEN_FILE")
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "x509up_missing"))
    with pytest.raises(ServerError, match="X509_USER_PROXY"):
        run(rec.client(retries=0).acquire_job({"siteName": "Q"}))
    assert rec.requests == []
    monkeypatch.setenv("PANDA_AUTH_TOKEN_FILE", str(tmp_path / "missing"))
    assert tls_context() is not None  # what the launcher calls: never fails for the proxy, reads no token
    monkeypatch.delenv("PANDA_AUTH_TOKEN_FILE")
    assert current_credentials().describe().startswith(f"the X.509 proxy X509_USER_PROXY={tmp_path}")
    assert BASE.startswith("https")


# --- a server that requires a client certificate in the handshake --------------------------------------
@pytest.fixture(scope="module")
def demanding(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """As panda-server behind gunicorn with ``cert_reqs`` CERT_REQUIRED: no certificate, no handshake."""
    directory = tmp_path_factory.mktemp("demanding-server")
    with serving(write_jobs(directory / "jobs", a=JOBS), directory / "server.sqlite", "--tls", "--require-cert",
                 "--cert", str(pki.server.cert), "--key", str(pki.server.key), "--ca", str(pki.ca.cert)) as server:
        yield server


@pytest.mark.parametrize("client_class", [ApiV1Client, LegacyClient])
def test_a_required_client_certificate_that_the_pilot_lacks(demanding: Server, pki: Pki,
                                                            monkeypatch: pytest.MonkeyPatch, client_class: type):
    """The TLS alert "certificate required" is one final error that says what is missing (it used to
    escape the client as a bare ssl.SSLError and kill the monitor)."""
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    error = refused(demanding.url, client_class)
    assert error.refused and "requires a client certificate" in str(error) and "X509_USER_PROXY" in str(error)
    assert "certificate required" in str(error)
    monkeypatch.setenv("X509_USER_PROXY", str(pki.client.proxy))
    assert acquire(demanding.url, client_class) is not None


def test_refusals_of_the_certificates_are_marked_refused(secured: tuple[Server, Path], pki: Pki,
                                                          monkeypatch: pytest.MonkeyPatch):
    server, _ = secured
    monkeypatch.setenv("X509_CERT_FILE", str(pki.ca.cert))
    assert refused(server.url).refused  # no credential at all: HTTP 403
    monkeypatch.setenv("X509_USER_PROXY", str(pki.rogue_client.proxy))
    assert refused(server.url).refused
