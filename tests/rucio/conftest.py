"""A real Rucio server (bench/rucio_server.py) for the tests of this directory, one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.rucio_server import INSTALL_TIMEOUT_S, RucioServer, rucio_running, venv_ready
from tests.e2e.conftest import job_server, site  # noqa: F401 - the whole pilot's fixtures


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """While Rucio's venv is still to be made, a test that starts the server may take that long too."""
    if venv_ready():
        return
    for item in items:
        if "rucio_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(INSTALL_TIMEOUT_S + 120))


@pytest.fixture(scope="session")
def rucio_server() -> Iterator[RucioServer]:
    with rucio_running() as server:
        yield server
