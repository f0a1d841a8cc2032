"""Storage paths: deterministic replica paths and the log SE's job-id path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.stager.paths import deterministic_path, file_url_path, join_url, log_se_path


def test_deterministic_path_follows_the_convention():
    digest = hashlib.md5(b"user.alice.x:file.root").hexdigest()
    assert deterministic_path("user.alice.x", "file.root") == f"user/alice/x/{digest[:2]}/{digest[2:4]}/file.root"


def test_deterministic_path_known_value():
    # md5("mc23:EVNT.01._000001.pool.root.1") = 33259c71...
    assert deterministic_path("mc23", "EVNT.01._000001.pool.root.1") == "mc23/33/25/EVNT.01._000001.pool.root.1"
    assert deterministic_path("demo.data", "a.txt") == deterministic_path("demo.data", "a.txt")
    assert deterministic_path("demo.data", "a.txt") != deterministic_path("demo.data2", "a.txt")


def test_log_se_path_in_pairs_of_digits():
    assert log_se_path(1838566890, "log.tgz") == "18/38/56/68/90/log.tgz"
    assert log_se_path("1838566890", "log.tgz") == "18/38/56/68/90/log.tgz"


def test_log_se_path_odd_digit_count_keeps_the_tail_short():
    assert log_se_path(12345, "l.tgz") == "12/34/5/l.tgz"
    assert log_se_path(7, "l.tgz") == "7/l.tgz"


def test_file_urls_round_trip(tmp_path: Path):
    base = (tmp_path / "a dir").as_uri()
    url = join_url(base + "/", "scope/ab/cd/f%1.txt")
    assert file_url_path(url) == tmp_path / "a dir" / "scope/ab/cd/f%1.txt"
    assert file_url_path("file://localhost/x/y") == Path("/x/y")


def test_file_url_path_rejects_other_urls():
    with pytest.raises(ValueError):
        file_url_path("root://host//x")
    with pytest.raises(ValueError):
        file_url_path("file://otherhost/x")
