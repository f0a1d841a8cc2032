"""The storage servers' fixtures: one server per session (bench/servers.py, shared with the stage-in
bench), up again before each test; ``tests/stager/conftest.py`` registers them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers import (  # noqa: F401 (re-exported for the tests)
    S3Server,
    StorageServer,
    WebDAVServer,
    XRootDServer,
    free_ports,
    running,
)


def _session(server_class: type[StorageServer]) -> Iterator[StorageServer]:
    with running(server_class) as server:
        yield server


def _up(server: StorageServer) -> StorageServer:
    server.start()  # a test may have stopped it; no-op when running
    return server


@pytest.fixture(scope="session")
def xrootd_session() -> Iterator[StorageServer]:
    yield from _session(XRootDServer)


@pytest.fixture(scope="session")
def webdav_session() -> Iterator[StorageServer]:
    yield from _session(WebDAVServer)


@pytest.fixture(scope="session")
def s3_session() -> Iterator[StorageServer]:
    yield from _session(S3Server)


@pytest.fixture
def xrootd_server(xrootd_session: XRootDServer) -> XRootDServer:
    return _up(xrootd_session)


@pytest.fixture
def webdav_server(webdav_session: WebDAVServer) -> WebDAVServer:
    return _up(webdav_session)


@pytest.fixture
def s3_server(s3_session: S3Server) -> S3Server:
    return _up(s3_session)
