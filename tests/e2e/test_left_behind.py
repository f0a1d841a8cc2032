"""Nothing left behind on the slot's scratch: a job's dir goes once its log is out and its final update
delivered (the next job's payload does not find it), the run dir at exit but for summary.json; a dir is
kept when asked (``--keep-workdirs``) or when the job's end could not be delivered."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodepilot import exitcodes
from nodepilot.job import FileSpec, Job
from services.monitor.jobrun import JobRun
from tests.e2e.conftest import NODEPILOT, add_jobs, final_update, kill_if_running
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until


@pytest.fixture
def removal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODEPILOT_KEEP_WORKDIRS")  # tests/conftest.py keeps them for every other test


def test_a_multi_job_pilot_removes_each_jobs_dir_once_it_is_reported(site: Path, job_server, removal):
    add_jobs(site, sleep_job(7401, 0.2), sleep_job(7402, 3))
    work = site / "work"
    pilot = subprocess.Popen([*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url,
                              "--workdir", str(work), "--se-dir", str(site / "se"), "--max-jobs", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (work / "PanDA_Pilot-7402" / "t_start").exists(), 60, "the second job's payload")
        assert not (work / "PanDA_Pilot-7401").exists()  # gone before the next job ran
        _out, err = pilot.communicate(timeout=120)
    finally:
        kill_if_running(pilot)
    assert pilot.returncode == exitcodes.OK, err[-3000:]
    jobs = job_server.jobs()
    assert [final_update(jobs[i])["job_status"] for i in (7401, 7402)] == ["finished", "finished"]
    assert sorted(p.name for p in (site / "se").rglob("hpc.740*.log.tgz"))  # the logs went out first
    assert not list(work.glob("PanDA_Pilot-*"))
    run_dirs = list(work.glob("run-*"))
    assert len(run_dirs) == 1 and [p.name for p in run_dirs[0].iterdir()] == ["summary.json"]


def test_job_dirs_are_kept_when_asked(site: Path, job_server, removal):
    add_jobs(site, sleep_job(7403, 0.1))
    result = subprocess.run([*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url, "--workdir",
                             str(site / "work"), "--se-dir", str(site / "se"), "--keep-workdirs"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == exitcodes.OK, result.stderr[-3000:]
    assert (site / "work" / "PanDA_Pilot-7403" / "t_end").is_file()


@pytest.mark.parametrize(("delivered", "log_status", "state", "keep", "removable"), [
    (True, "done", "failed", False, True),  # a failed job's story is in its log, which is out
    (False, "done", "finished", False, False),  # its end not delivered: the dir is the only record
    (True, "failed", "finished", False, False),  # its log did not go out
    (True, "done", "finished", True, False),  # --keep-workdirs
])
def test_which_job_dirs_may_go(pilot_config, delivered, log_status, state, keep, removable):
    job = Job(panda_id=7404, attempt_nr=1, transformation="true", log=FileSpec(lfn="l.tgz", scope="s"))
    pilot_config.keep_workdirs = keep
    run = JobRun(job, pilot_config, None, outbox=None)  # type: ignore[arg-type]
    run.result.final_delivered, run.result.state = delivered, state
    run.staged = [{"lfn": "l.tgz", "status": log_status}]
    assert run.removable() is removable
    no_log = JobRun(Job(panda_id=7405, attempt_nr=1, transformation="true"), pilot_config, None,
                    outbox=None)  # type: ignore[arg-type]
    no_log.result.final_delivered, no_log.result.state = delivered, state
    assert no_log.removable() is (delivered and state == "finished" and not keep)
