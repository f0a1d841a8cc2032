"""The pieces of push mode alone: the job spec forms, reports merged and never declared twice, the wait
for a file, the reference pilot's rules for entering the mode, the MultiJobs layout."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from nodepilot.panda.harvester_files import JobSpecError, append_entries, parse_job_spec, write_whole
from nodepilot.panda.harvester_mode import PushModeError, job_access_point, push_access_point
from nodepilot.panda.harvester_wait import wait_for_file


def test_job_spec_forms():
    assert parse_job_spec('{"4711": {"jobPars": "x"}}') == (4711, {"PandaID": 4711, "jobPars": "x"})
    assert parse_job_spec('  {"PandaID": 7, "jobPars": "x"}') == (7, {"PandaID": 7, "jobPars": "x"})
    assert parse_job_spec("PandaID=8&jobPars=-c+%27echo%27") == (8, {"PandaID": "8", "jobPars": "-c 'echo'"})
    for broken, why in (("", "empty"), ("{", "not valid JSON"), ("{}", "no job"), ("a=b", "no PandaID"),
                        ('{"x": {}}', "not a PandaID")):
        with pytest.raises(JobSpecError, match=why):
            parse_job_spec(broken)
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec('{"12": []}')
    assert caught.value.panda_id == 12


def test_entries_are_merged_with_what_harvester_has_not_read_and_never_declared_twice(tmp_path):
    dump = tmp_path / "event_status.dump.json"
    assert append_entries(dump, 1, [{"type": "log", "path": "/ap/a"}]) == 1
    assert append_entries(dump, 1, [{"type": "output", "path": "/ap/b"}, {"type": "log", "path": "/ap/a"}]) == 1
    assert json.loads(dump.read_text()) == {"1": [{"type": "log", "path": "/ap/a"},
                                                  {"type": "output", "path": "/ap/b"}]}
    os.rename(dump, dump.with_name(dump.name + ".read"))  # Harvester took it
    assert append_entries(dump, 2, [{"type": "es_output", "path": "/ap/c", "eventRangeID": "r1"}]) == 1
    assert append_entries(dump, 2, [{"type": "es_output", "path": "/ap/c", "eventRangeID": "r1"}]) == 0
    assert list(json.loads(dump.read_text())) == ["2"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "event_status.dump.json", "event_status.dump.json.read"]


def test_write_whole_leaves_no_temporary_file(tmp_path):
    write_whole(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_the_wait_wakes_when_the_file_appears(tmp_path):
    def later() -> None:
        time.sleep(0.3)
        (tmp_path / ".HPCJobs.json.new").write_text("{}")
        os.replace(tmp_path / ".HPCJobs.json.new", tmp_path / "HPCJobs.json")

    threading.Thread(target=later).start()
    t = time.monotonic()
    found = asyncio.run(wait_for_file(tmp_path, ("HPCJobs.json", "pandaJobData.out"), 30))
    assert found == tmp_path / "HPCJobs.json" and time.monotonic() - t < 5
    t = time.monotonic()
    assert asyncio.run(wait_for_file(tmp_path, ("nothing",), 0.5)) is None
    assert 0.4 < time.monotonic() - t < 5


def test_entering_push_mode_as_the_reference_pilot_decides(tmp_path):
    ap = str(tmp_path)
    assert push_access_point(["-z", f"--harvester-workdir {ap}"], {}) == (ap, [])
    assert push_access_point(["-z", f"--harvester-datadir={ap}", "-i PR"], {}) == (ap, ["-i PR"])
    assert push_access_point(["-z", "--harvester-eventstatusdump x"], {"HARVESTER_WORKDIR": ap}) == (ap, [])
    assert push_access_point(["--harvester-submit-mode push"], {"HARVESTER_ID": "h"}, cwd=tmp_path) == (ap, [])
    for ignored, env in ((["-z"], {}), ([f"--harvester-workdir {ap}"], {}),
                         (["-z", "--harvester-submit-mode PULL"], {"HARVESTER_ID": "h"}),
                         (["--harvester-submit-mode PUSH"], {})):
        assert push_access_point(ignored, env) == (None, ignored)


def test_multijobs_one_job_per_rank(tmp_path):
    assert job_access_point(tmp_path, {}) == tmp_path
    (tmp_path / "worker_pandaids.json").write_text("[11, 12]")
    assert job_access_point(tmp_path, {"SLURM_PROCID": "1"}) == tmp_path / "12"
    assert job_access_point(tmp_path, {}) == tmp_path / "11"
    with pytest.raises(PushModeError, match="none for rank 2") as caught:
        job_access_point(tmp_path, {"SLURM_PROCID": "2"})
    assert caught.value.code == 0
    (tmp_path / "worker_pandaids.json").write_text("[11")
    with pytest.raises(PushModeError, match="expected a JSON list") as caught:
        job_access_point(tmp_path, {})
    assert caught.value.code == 2
    (tmp_path / "HPCJobs.json").write_text("{}")  # one job at the top: not MultiJobs
    assert job_access_point(tmp_path, {"SLURM_PROCID": "1"}) == tmp_path


def test_a_file_written_in_place_is_taken_only_when_whole(tmp_path):
    """Harvester writes the job spec in place (no rename): the wait ends when its writer closes it."""
    def writer() -> None:
        with (tmp_path / "HPCJobs.json").open("w") as fh:
            fh.write('{"1": ')
            fh.flush()
            time.sleep(0.5)
            fh.write('{"jobPars": "x"}}')

    thread = threading.Thread(target=writer)
    thread.start()
    found = asyncio.run(wait_for_file(tmp_path, ("HPCJobs.json",), 30))
    thread.join()
    assert found is not None and json.loads(found.read_text()) == {"1": {"jobPars": "x"}}
    t = time.monotonic()  # there whole before the wait began (older than a moment): taken at once
    os.utime(found, (time.time() - 10, time.time() - 10))
    assert asyncio.run(wait_for_file(tmp_path, ("HPCJobs.json",), 30)) == found and time.monotonic() - t < 1
