"""make test's skip policy (tests/conftest.py): every skip is listed with its reason at the end; under
CI=true a skip that tests/allowed_skips.txt does not list fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = '''
import pytest

def test_needs_a_real_part():
    pytest.skip("no such server here")

@pytest.mark.skipif(True, reason="no such kernel here")
def test_listed():
    pass

def test_runs():
    pass
'''
CONFTEST = '''
from pathlib import Path
import tests.conftest as shared
from tests.conftest import pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401
shared.ALLOWED_SKIPS = Path(__file__).with_name("allowed.txt")
'''


def run_suite(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_parts.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "allowed.txt").write_text("# listed\ntest_parts.py::test_listed | the kernel of CI has none\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(tmp_path), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("ci", ["", "false"])
def test_outside_ci_skips_pass_and_are_listed_at_the_end(tmp_path, ci):
    done = run_suite(tmp_path, ci)
    assert done.returncode == 0, done.stdout
    assert "skipped tests (2; allowed under CI=true: tests/allowed.txt)" in done.stdout
    assert "test_parts.py::test_needs_a_real_part: no such server here [NOT listed: fails under CI=true]" in done.stdout
    assert "test_parts.py::test_listed: no such kernel here [listed: the kernel of CI has none]" in done.stdout


def test_under_ci_an_unlisted_skip_fails_the_run(tmp_path):
    done = run_suite(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 skipped" in done.stdout
    assert "skipped under CI=true, and not listed in allowed.txt: no such server here" in done.stdout
