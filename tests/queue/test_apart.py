"""The queue data read by a short-lived child: the same queue, the same one-line errors, and pydantic never
imported by the pilot's own process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nodepilot.queue.apart import QueueReader
from nodepilot.queue.loader import load
from nodepilot.queue.schema import QueueConfigError
from tests.queue.test_conversion import config, standard


def test_the_child_reads_the_same_queue(tmp_path):
    cfg = config(tmp_path, standard(maxwdir=3000, corecount=8))
    assert QueueReader(cfg).result() == load(cfg)


def test_a_bad_queue_is_the_same_one_line_error(tmp_path):
    cfg = config(tmp_path, standard(maxtime="soon"))
    with pytest.raises(QueueConfigError) as in_place:
        load(cfg)
    with pytest.raises(ValueError) as apart:
        QueueReader(cfg).result()
    assert str(apart.value) == str(in_place.value) and "\n" not in str(apart.value)


def test_a_missing_file_is_one_line_naming_it(tmp_path):
    cfg = config(tmp_path)
    cfg.queuedata_file = str(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match=r"nowhere.json: cannot read it: No such file"):
        QueueReader(cfg).result()


def test_the_reading_process_never_imports_pydantic(tmp_path):
    cfg = config(tmp_path, standard())
    cfg.run_dir = str(tmp_path / "run")
    code = ("import sys; from nodepilot.config import PilotConfig; from nodepilot.queue.apart import QueueReader; "
            "from nodepilot.queue import preflight; "
            f"q = QueueReader(PilotConfig.load({str(cfg.save())!r})).result(); "
            "assert q.name == 'TEST_Q', q; assert 'pydantic' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
