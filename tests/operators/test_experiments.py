"""Experiment plug-ins (entry points ``nodepilot.experiments``) and the queue's envsetup, through the
real pilot: ``nodepilot run`` on a local SE, with the test's Redis so the run request can be read."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import redis

from nodepilot import bus, exitcodes, experiments
from nodepilot.experiments.generic import GenericExperiment
from nodepilot.experiments.toyexp import ToyExperiment
from nodepilot.job import parse_job
from nodepilot.queue.model import QueueData
from services.runner.report import outcome
from tests.operators.helpers import NODEPILOT, final, finish, job, queuedata, start_pilot


def run_requests(redis_url: str) -> list[dict]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        requests = [bus.decode(fields) for _id, fields in r.xrange(bus.RUNNER_REQUESTS)]
        return [m for m in requests if m.get("action") == "run"]
    finally:
        r.close()


def site_dir(tmp_path: Path) -> Path:
    """The site's own files (setup scripts, software area), outside the work dir."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    return site


def run_job(tmp_path: Path, redis_url: str, job_def: dict, *extra: str, code: int = exitcodes.OK,
            **queue: object) -> tuple[str, Path]:
    """``nodepilot run`` of the job; ``code``: its exit code (exitcodes.JOB_FAILED for a job that fails)."""
    # plain mode: the site's files live under /tmp here, which a sandbox replaces by its own /tmp
    # (the payload's isolation is tested in tests/runner; setup and plug-ins do not depend on it)
    queue.setdefault("isolation", {"mode": "none"})
    pilot = start_pilot(tmp_path, job_def, "--redis-url", redis_url, *extra,
                        queue=queuedata(tmp_path, tmp_path / "se", **queue))
    out = finish(pilot, timeout=60)
    assert pilot.process.returncode == code, pilot.stderr.read_text()[-3000:]
    return out, pilot.workdir / f"PanDA_Pilot-{job_def['PandaID']}"


def test_plugins_are_entry_points() -> None:
    found = {ep.name: ep for ep in entry_points(group=experiments.GROUP)}
    assert found["generic"].load() is GenericExperiment and found["toyexp"].load() is ToyExperiment
    assert {"generic", "toyexp"} <= set(experiments.available())
    assert isinstance(experiments.load("toyexp"), ToyExperiment)
    assert isinstance(experiments.load(""), GenericExperiment)
    with pytest.raises(experiments.UnknownExperiment, match="installed: generic, toyexp"):
        experiments.load("nosuchexp")
    assert experiments.name_for("", "toyexp") == "toyexp" and experiments.name_for("generic", "toyexp") == "generic"


def test_toyexp_setup_quotes_what_comes_from_the_job(tmp_path: Path) -> None:
    spec = parse_job(job(1, "true", "", swRelease="1.0; touch pwned", homepackage="Toy Core"))
    setup = ToyExperiment().setup(spec, QueueData())
    shown = subprocess.run(["bash", "-c", f"{setup}\necho \"$TOYEXP_RELEASE|$TOYEXP_SW_DIR\""], cwd=tmp_path,
                           capture_output=True, text=True, timeout=10, env={"TOYEXP_SW_BASE": "/sw", "PATH": "/bin"})
    assert shown.stdout.strip() == "1.0; touch pwned|/sw/Toy Core/1.0; touch pwned"
    assert not (tmp_path / "pwned").exists()


def test_toyexp_report_reading(tmp_path: Path) -> None:
    (tmp_path / "toy_report.txt").write_text("# toyexp\nstatus=65\nmessage=bad input\nevents=x\nguid.a.root=G-1\n"
                                            "nonsense\n")
    reports = ToyExperiment().read_report(tmp_path)
    assert (reports.exit_code, reports.exit_msg, reports.n_events) == (65, "bad input", 0)
    assert reports.output_guids == {"a.root": "G-1"}
    assert any("not a number" in n for n in reports.notes) and any("not key=value" in n for n in reports.notes)
    result = outcome(tmp_path, 0, None, read=ToyExperiment().read_report)
    assert (result.pilot_error_code, result.exe_error_code, result.exe_error_diag) == (1305, 65, "bad input")
    (tmp_path / "toy_report.txt").unlink()
    assert outcome(tmp_path, 0, None, read=ToyExperiment().read_report).pilot_error_code == 0  # no report: fine


def test_generic_with_envsetup_sourced_in_the_payload_shell(tmp_path: Path, redis_url: str) -> None:
    script = site_dir(tmp_path) / "site setup.sh"
    script.write_text("export SITE_MARK=from-the-site-setup\n")
    spec = job(4201, "bash", "-c 'echo mark=$SITE_MARK; echo x > out.txt'", container_name="docker://generic:1")
    _out, workdir = run_job(tmp_path, redis_url, spec, envsetup=f"source '{script}'")
    assert "mark=from-the-site-setup" in (workdir / "payload.stdout").read_text()
    assert final(tmp_path / "work", 4201)["state"] == "finished"
    request = run_requests(redis_url)[-1]
    assert request["experiment"] == "generic" and request["setup"].startswith(f"{{ source '{script}'\n}} || ")
    assert request["container"] == "docker://generic:1"  # generic: the job's own container_name


def test_a_failing_envsetup_fails_the_job_with_1110_and_the_payload_never_runs(tmp_path: Path,
                                                                                redis_url: str) -> None:
    spec = job(4202, "bash", "-c 'touch ran.txt; echo x > out.txt'")
    _out, workdir = run_job(tmp_path, redis_url, spec, envsetup=f"source '{site_dir(tmp_path)}/missing.sh'",
                            code=exitcodes.JOB_FAILED)
    update = final(tmp_path / "work", 4202)
    assert update["state"] == "failed" and update["pilotErrorCode"] == 1110, update
    assert "envsetup failed" in update["pilotErrorDiag"], update
    assert not (workdir / "ran.txt").exists()


TOY_PAYLOAD = ("echo sw=$TOYEXP_SW_DIR greeting=$TOYEXP_GREETING report=$TOYEXP_REPORT; echo data > out.txt; "
               "printf 'status=%s\\nmessage=%s\\nevents=42\\nguid.out.txt=11111111-2222-3333-4444-555555555555\\n' "
               "{status} '{message}' > toy_report.txt")


def toy_site(tmp_path: Path) -> str:
    """A software area with the release's setup.sh; the queue's envsetup says where it is."""
    release = site_dir(tmp_path) / "sw" / "ToyCore" / "2.0.1"
    release.mkdir(parents=True)
    (release / "setup.sh").write_text("export TOYEXP_GREETING=hello-from-2.0.1\n")
    return f"export TOYEXP_SW_BASE={site_dir(tmp_path) / 'sw'}"


def test_toyexp_through_the_pilot(tmp_path: Path, redis_url: str) -> None:
    spec = job(4202, "bash", f"-c \"{TOY_PAYLOAD.format(status=0, message='OK')}\"", swRelease="2.0.1",
               homepackage="ToyCore")
    _out, workdir = run_job(tmp_path, redis_url, spec, "--pilot-user", "toyexp", envsetup=toy_site(tmp_path))
    stdout = (workdir / "payload.stdout").read_text()
    assert f"sw={tmp_path}/site/sw/ToyCore/2.0.1 greeting=hello-from-2.0.1 report=toy_report.txt" in stdout
    update = final(tmp_path / "work", 4202)
    assert update["state"] == "finished" and update["nEvents"] == 42
    assert "events=42" in update["metaData"]
    files = json.loads(update["xml"])
    assert files["out.txt"]["guid"] == "11111111-2222-3333-4444-555555555555"  # from toyexp's own report
    assert "toy_report.4202.txt" in files  # toyexp's extra output, staged out with the outputs
    request = run_requests(redis_url)[-1]
    assert request["experiment"] == "toyexp" and request["container"] == "toyexp/release:2.0.1"
    assert request["env"]["TOYEXP_REPORT"] == "toy_report.txt"


def test_toyexp_failure_from_its_report_and_queue_selection(tmp_path: Path, redis_url: str) -> None:
    spec = job(4203, "bash", f"-c \"{TOY_PAYLOAD.format(status=65, message='bad input')}\"", swRelease="2.0.1")
    # no --pilot-user: the queue data names the experiment
    run_job(tmp_path, redis_url, spec, envsetup=toy_site(tmp_path), pilot_user="toyexp", code=exitcodes.JOB_FAILED)
    update = final(tmp_path / "work", 4203)
    assert update["state"] == "failed" and update["pilotErrorCode"] == 1305
    assert update["exeErrorCode"] == 65 and update["exeErrorDiag"] == "bad input"


def test_unknown_pilot_user_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps(job(4204, "true", "")))
    result = subprocess.run([*NODEPILOT, "run", str(tmp_path / "job.json"), "--workdir", str(tmp_path / "w"),
                             "--pilot-user", "nosuchexp"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "unknown experiment plug-in 'nosuchexp'" in result.stderr and "toyexp" in result.stderr
