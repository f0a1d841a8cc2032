"""Fixtures of the event-service tests: the real stager as a process, and job JOB's ranges file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepilot.config import PilotConfig
from tests.conftest import running_service
from tests.eventclient.helpers import JOB, N_RANGES, make_ranges


@pytest.fixture
def stager(pilot_config: PilotConfig) -> Iterator[None]:
    with running_service("stager", pilot_config):
        yield


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    ranges_file, report_file = tmp_path / "ranges.json", tmp_path / "reports.jsonl"
    make_ranges(ranges_file, JOB, N_RANGES)
    return ranges_file, report_file
