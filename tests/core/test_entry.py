"""The ``nodepilot`` command's entry (nodepilot/entry.py): ``start`` and ``run`` read their command line in a
child; what the child says is said once, its exit code is the command's, and the environment it sets reaches
the pilot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nodepilot import entry, exitcodes
from tests.e2e.conftest import NODEPILOT


def _run(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*NODEPILOT, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", ["start", "run"])
def test_help_is_printed_once_and_ends_well(tmp_path: Path, command: str):
    result = _run(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Usage:") == 1 and result.stderr == ""


def test_an_unknown_option_is_one_usage_error(tmp_path: Path):
    result = _run(tmp_path, "start", "--no-such-option")
    assert result.returncode == exitcodes.USAGE
    assert result.stderr.count("No such option") == 1 and "Traceback" not in result.stderr


def test_the_environment_the_command_sets_reaches_the_pilot(tmp_path: Path):
    """--log-format json is passed to the pilot as NODEPILOT_LOG_FORMAT: its own lines are JSON."""
    job = tmp_path / "job.json"
    job.write_text('{"PandaID": 7311, "attemptNr": 1, "transformation": "true", "jobPars": ""}')
    result = _run(tmp_path, "run", str(job), "--workdir", "w", "--se-dir", "se", "--log-format", "json")
    assert result.returncode == exitcodes.OK, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines[:5]


def test_exit_codes_as_python_gives_them():
    assert entry._exit_code(None) == 0
    assert entry._exit_code(2) == 2
    assert entry._exit_code(256 + 3) == 3
