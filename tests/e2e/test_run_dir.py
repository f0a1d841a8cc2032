"""One pilot per run directory: a second pilot given the same one refuses with one line (exit 2)
and leaves the first alone; a pilot's run dir is emptied at exit but for its jobs table."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from nodepilot import exitcodes
from tests.e2e.conftest import NODEPILOT, kill_if_running
from tests.waiting import wait_until


def job_file(site: Path, panda_id: int, seconds: int) -> Path:
    path = site / f"job-{panda_id}.json"
    path.write_text(json.dumps({"PandaID": panda_id, "attemptNr": 1, "transformation": "sleep",
                                "jobPars": str(seconds)}))
    return path


def run_cmd(site: Path, job: Path, run_dir: Path, workdir: str) -> list[str]:
    return [*NODEPILOT, "run", str(job), "--workdir", str(site / workdir), "--se-dir", str(site / "se"),
            "--run-dir", str(run_dir)]


def test_a_second_pilot_on_the_same_run_dir_refuses_and_the_first_goes_on(site: Path):
    run_dir = Path(tempfile.mkdtemp(prefix="np-rd-"))
    first = subprocess.Popen(run_cmd(site, job_file(site, 7101, 4), run_dir, "w1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (run_dir / "monitor.sock").exists(), 60, "the first pilot's monitor")
        second = subprocess.run(run_cmd(site, job_file(site, 7102, 0), run_dir, "w2"),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == exitcodes.USAGE, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "in use by another pilot" in lines[0] and "Traceback" not in second.stderr
        assert not (site / "w2" / "updates.jsonl").exists()  # it did nothing
        assert (run_dir / "monitor.sock").exists() and (run_dir / "redis").is_dir()  # nothing of the first touched
        _out, err = first.communicate(timeout=120)
    finally:
        kill_if_running(first)
    assert first.returncode == exitcodes.OK, err[-3000:]
    finals = [json.loads(line)["fields"] for line in (site / "w1" / "updates.jsonl").read_text().splitlines()]
    assert finals[-1]["state"] == "finished"
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]  # Redis, sockets, pilot.json gone


def test_a_run_dir_is_usable_again_once_its_pilot_ended(site: Path):
    run_dir = Path(tempfile.mkdtemp(prefix="np-rd-"))
    for panda_id in (7103, 7104):
        done = subprocess.run(run_cmd(site, job_file(site, panda_id, 0), run_dir, f"w{panda_id}"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == exitcodes.OK, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [job["panda_id"] for job in summary] == [7104]


def test_a_second_front_end_on_the_same_run_dir_refuses(site: Path, job_server):
    run_dir = Path(tempfile.mkdtemp(prefix="np-rd-"))
    command = [*NODEPILOT, "frontend", "--server", job_server.url, "--workdir", str(site / "fe"), "--run-dir",
               str(run_dir)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (run_dir / "frontend.sock").exists(), 60, "the first front-end")
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == exitcodes.USAGE, second.stderr
        assert "in use by another pilot" in second.stderr and "Traceback" not in second.stderr
        assert (run_dir / "frontend.sock").exists() and first.poll() is None  # the first one untouched
        first.terminate()
        first.wait(30)
    finally:
        kill_if_running(first)
    assert not (run_dir / "redis").exists() and not (run_dir / "pilot.json").exists()
