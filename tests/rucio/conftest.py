"""A real Rucio server (tests/rucio/server.py) for the tests of this directory, one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import job_server, site  # noqa: F401 - the whole pilot's fixtures
from tests.rucio.server import RucioServer, rucio_running


@pytest.fixture(scope="session")
def rucio_server() -> Iterator[RucioServer]:
    with rucio_running() as server:
        yield server
