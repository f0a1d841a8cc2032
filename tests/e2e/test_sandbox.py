"""Payload isolation through the whole pilot: a payload that tries to reach what the pilot keeps to
itself (its proxy, Redis, the services' APIs, pilot.json, files outside its work dir, the pilot's
processes) is denied every time in the sandbox, and writes what it could and could not do to a file
in its work dir. Plain mode runs only when the configuration allows it, and says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from services.runner.isolation import NOTE_FILE, probe
from services.stager.paths import deterministic_path
from tests.e2e.conftest import NODEPILOT, add_jobs, final_update, write_queuedata
from tests.e2e.sandbox_probe import ATTEMPTS, verdicts

pytestmark = pytest.mark.skipif(not probe().bwrap, reason="no working bubblewrap here")

PROBE = Path(__file__).with_name("sandbox_probe.py")


def put_on_se(se: Path, scope: str, lfn: str, data: bytes) -> dict:
    path = se / deterministic_path(scope, lfn)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"fsize": len(data), "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"}


@pytest.fixture
def layout(site):
    """Where the pilot keeps its things: a short run dir (Unix sockets) and a proxy, both outside the
    job's work dir; the host /tmp file the payload will try to create."""
    base = Path(tempfile.mkdtemp(prefix="np-sbx-"))
    (base / "run").mkdir()
    proxy = base / "x509up_u12345"
    proxy.write_text("-----BEGIN CERTIFICATE----- not a real proxy")
    proxy.chmod(0o600)
    name = f"np-escaped-{os.getpid()}"
    escapes = {"host_tmp": Path(tempfile.gettempdir()) / name, "system_file": Path("/etc") / name,
               "home_file": Path.home() / name}  # (only plain mode may create them: removed at the end)
    yield {"base": base, "run": base / "run", "proxy": proxy, **escapes}
    shutil.rmtree(base, ignore_errors=True)
    for path in escapes.values():
        path.unlink(missing_ok=True)


def probe_args(site: Path, layout: dict) -> list[str]:
    return [str(p) for p in (layout["run"], layout["proxy"], site / "work" / "escaped.txt", layout["host_tmp"],
                             layout["system_file"], layout["home_file"])]


def probe_job(site: Path, panda_id: int, layout: dict) -> dict:
    """The probe is the job's input, staged in from the SE like any input."""
    spec = put_on_se(site / "se", "demo.tools", PROBE.name, PROBE.read_bytes())
    return {"PandaID": panda_id, "attemptNr": 1, "transformation": "python3",
            "jobPars": " ".join([PROBE.name, *probe_args(site, layout)]),
            "inFiles": PROBE.name, "scopeIn": "demo.tools", "fsize": str(spec["fsize"]), "checksum": spec["checksum"],
            "outFiles": f"l{panda_id}.tgz", "logFile": f"l{panda_id}.tgz", "scopeLog": "demo.log"}


def run_pilot(site: Path, server_url: str, layout: dict, *args: str, env: dict[str, str] | None = None,
              queuedata: dict | None = None) -> subprocess.CompletedProcess:
    extra = []
    if queuedata is not None:
        extra = ["--queuedata", write_queuedata(site, **queuedata)]
    return subprocess.run(
        [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", server_url, "--workdir", str(site / "work"),
         "--se-dir", str(site / "se"), "--run-dir", str(layout["run"]), *extra, *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "X509_USER_PROXY": str(layout["proxy"]), **(env or {})})


def metrics(update: dict) -> dict[str, str]:
    text = update.get("job_metrics") or update.get("jobMetrics") or ""
    return dict(pair.split("=", 1) for pair in text.split())


@pytest.mark.parametrize("mounted", [False, True], ids=["out-of-sight", "masked-under-a-bind"])
def test_sandboxed_payload_is_denied_everything_of_the_pilot(site, job_server, layout, mounted):
    """Out of sight: nothing of the pilot is mounted. Masked: the site binds the directory holding the
    run dir and the proxy read-only into the sandbox (a software area, say): both are covered."""
    add_jobs(site, probe_job(site, 9101, layout))
    queuedata = {"isolation": {"binds": [str(layout["base"])]}} if mounted else None
    result = run_pilot(site, job_server.url, layout, queuedata=queuedata)
    assert result.returncode == 0, result.stderr[-4000:]
    update = final_update(job_server.jobs()[9101])
    assert update["job_status"] == "finished", (update, result.stderr[-4000:])
    assert metrics(update)["isolation"] == "bwrap"
    workdir = site / "work" / "PanDA_Pilot-9101"
    report = json.loads((workdir / "attempts.json").read_text())
    tried = report["attempts"]
    assert verdicts(tried, probe_args(site, layout)) == dict.fromkeys(ATTEMPTS, "denied"), tried
    assert tried["write_system_dir"].startswith("denied") and tried["write_home"].startswith("denied")
    assert report["info"]["cwd"] == str(workdir) and report["info"]["home"] == str(workdir)
    assert (workdir / NOTE_FILE).read_text().startswith("isolation: bwrap\n")


def test_plain_mode_is_refused_unless_allowed(site, job_server, layout):
    add_jobs(site, probe_job(site, 9201, layout), probe_job(site, 9202, layout))
    # apptainer is asked for and is not installed: no sandbox, and plain mode not allowed
    result = run_pilot(site, job_server.url, layout, "--max-jobs", "1", env={"NODEPILOT_ISOLATION": "apptainer"})
    assert result.returncode == 0, result.stderr[-4000:]
    refused = final_update(job_server.jobs()[9201])
    assert refused["job_status"] == "failed" and refused["pilot_error_code"] == 1110, refused
    assert "plain mode is not allowed" in refused["pilot_error_diag"]
    assert "l9201.tgz" in json.loads(refused["job_output_report"])  # the log still went out
    assert not (site / "work" / "PanDA_Pilot-9201" / "attempts.json").exists()  # the payload never ran
    # the same, plain mode allowed: it runs, and says so in its log and its metrics
    result = run_pilot(site, job_server.url, layout, env={"NODEPILOT_ISOLATION": "apptainer",
                                                          "NODEPILOT_ALLOW_PLAIN": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    plain = final_update(job_server.jobs()[9202])
    assert plain["job_status"] == "finished" and metrics(plain)["isolation"] == "none", plain
    workdir = site / "work" / "PanDA_Pilot-9202"
    assert "WARNING: plain mode" in (workdir / NOTE_FILE).read_text()
    tried = json.loads((workdir / "attempts.json").read_text())["attempts"]
    # why plain mode is opt-in: the same payload reaches the pilot's Redis, files and processes
    allowed = {"connect_redis", "read_pilot_json", "read_proxy", "monitor_api", "see_pilot_processes"}
    assert {name for name, outcome in tried.items() if outcome == "allowed"} >= allowed, tried
