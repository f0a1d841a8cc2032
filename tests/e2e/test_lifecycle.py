"""One real pilot, real services, real Redis, real payloads, against the local job server."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib

from tests.e2e.conftest import EXAMPLES, add_jobs, final_update, run_pilot


def se_path(site, scope: str, lfn: str):
    h = hashlib.md5(f"{scope}:{lfn}".encode()).hexdigest()
    return site / "se" / scope.replace(".", "/") / h[:2] / h[2:4] / lfn


def adler32(path) -> str:
    return f"{zlib.adler32(path.read_bytes()) & 0xFFFFFFFF:08x}"


def test_demo_jobs_end_to_end(site, job_server):
    add_jobs(site, *sorted((EXAMPLES / "jobs").glob("*.json")))
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_server.jobs()

    hello = final_update(jobs[1001])
    assert hello["job_status"] == "finished" and hello["pilot_error_code"] == 0
    states = [u["job_status"] for u in jobs[1001]["updates"]]
    assert states[0] == "starting" and "running" in states and states[-1] == "finished"
    report = json.loads(hello["job_output_report"])
    out = se_path(site, "demo.output", "hello.out.txt")
    assert report["hello.out.txt"]["adler32"] == adler32(out)
    assert report["hello.out.txt"]["fsize"] == out.stat().st_size
    log = se_path(site, "demo.log", "demo.1001.log.tgz")
    assert report["demo.1001.log.tgz"]["guid"] == "7b3c1f2a-0001-4d6e-9a1b-000000001001"
    with tarfile.open(log) as tar:
        names = tar.getnames()
    assert all(n.startswith("tarball_PandaJob_1001_LOCAL_TEST") for n in names)
    assert any(n.endswith("payload.stdout") for n in names)
    assert len(hello["pilot_timing"].split("|")) == 6
    assert hello["start_time"] <= hello["end_time"] and len(hello["end_time"]) == 19

    merge = final_update(jobs[1002])
    assert merge["job_status"] == "finished", merge
    assert merge["n_events"] == 3000
    assert json.loads(merge["meta_data"])["exitMsg"] == "OK"
    merged = se_path(site, "demo.output", "merged.txt")
    assert merged.stat().st_size == 17000 + 28000

    failing = final_update(jobs[1003])
    assert failing["job_status"] == "failed"
    assert failing["pilot_error_code"] == 1305 and failing["exe_error_code"] == 3
    assert failing["trans_exit_code"] == 3
    assert "demo.1003.log.tgz" in json.loads(failing["job_output_report"])  # log still staged out
    assert se_path(site, "demo.log", "demo.1003.log.tgz").exists()

    broken = final_update(jobs[1004])
    assert broken["job_status"] == "failed" and broken["pilot_error_code"] == 1008
    assert "fsize has 1 entries for 2 files" in broken["pilot_error_diag"]

    assert "1001" in result.stdout and "finished" in result.stdout  # the summary table


def test_missing_input_fails_stagein_and_log_is_staged_out(site, job_server):
    add_jobs(site, {
        "PandaID": 2001, "attemptNr": 1, "transformation": "bash", "jobPars": "-c 'exit 0'",
        "inFiles": "not.there.txt", "fsize": "100", "checksum": "ad:00000001", "scopeIn": "demo.data",
        "GUID": "g-1", "outFiles": "x.txt,job2001.log.tgz", "logFile": "job2001.log.tgz",
        "scopeOut": "demo.output", "scopeLog": "demo.log",
    })
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[2001])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1099
    assert "not.there.txt" in update["pilot_error_diag"]
    assert "job2001.log.tgz" in json.loads(update["job_output_report"])
    assert not any(u["job_status"] == "running" for u in job_server.jobs()[2001]["updates"])


def test_broken_definition_does_not_stop_the_next_job(site, job_server):
    add_jobs(site,
             {"PandaID": 3001, "transformation": "bash", "inFiles": "a/../../b", "logFile": "l.tgz"},
             {"PandaID": 3002, "transformation": "bash", "jobPars": "-c 'echo ok'", "logFile": "l3002.tgz",
              "outFiles": "l3002.tgz", "scopeLog": "demo.log"})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_server.jobs()
    assert final_update(jobs[3001])["pilot_error_code"] == 1008
    assert "unsafe file name" in final_update(jobs[3001])["pilot_error_diag"]
    assert final_update(jobs[3002])["job_status"] == "finished"


def test_a_broken_definition_still_gets_its_log_with_the_pilots_diag(site, job_server):
    add_jobs(site, {"PandaID": 3003, "attemptNr": 2, "transformation": "bash", "inFiles": "a.txt,b.txt",
                    "fsize": "12", "outFiles": "l3003.tgz", "logFile": "l3003.tgz", "scopeLog": "demo.log"})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[3003])
    assert update["job_status"] == "failed" and update["pilot_error_code"] == 1008, update
    assert update["attempt_nr"] == 2
    report = json.loads(update["job_output_report"])
    assert list(report) == ["l3003.tgz"] and report["l3003.tgz"]["fsize"] > 0
    with tarfile.open(se_path(site, "demo.log", "l3003.tgz")) as tar:
        diag = next(m for m in tar.getmembers() if m.name.endswith("/pilot_diag.txt"))
        assert b"fsize has 1 entries for 2 files" in tar.extractfile(diag).read()  # type: ignore[union-attr]


def test_no_job_exits_zero(site, job_server):
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no job" in (result.stdout + result.stderr).lower()


def test_standalone_run_writes_updates_file(site, tmp_path):
    import subprocess

    from tests.e2e.conftest import NODEPILOT

    job = EXAMPLES / "jobs" / "02_merge_inputs.json"
    result = subprocess.run([*NODEPILOT, "run", str(job), "--workdir", str(site / "work"),
                             "--se-dir", str(site / "se")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (site / "work" / "updates.jsonl").read_text().splitlines()]
    states = [line["fields"]["state"] for line in lines]
    assert states[0] == "starting" and states[-1] == "finished"
    assert lines[-1]["fields"]["nEvents"] == 3000


def test_worker_inventory_and_status_reach_the_server(site, job_server):
    import os
    import subprocess

    import httpx

    from tests.e2e.conftest import NODEPILOT

    add_jobs(site, EXAMPLES / "jobs" / "01_hello.json")
    env = {**os.environ, "HARVESTER_WORKER_ID": "4711", "HARVESTER_ID": "harvester-test"}
    for api in ("v1", "legacy"):
        result = subprocess.run(
            [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url, "--api", api,
             "--workdir", str(site / "work"), "--se-dir", str(site / "se")],
            capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    reports = httpx.get(f"{job_server.url}/workers", timeout=10).json()
    statuses = [(r.get("status"), r.get("worker_id") or r.get("workerID")) for r in reports
                if r["method"] == "update_worker_status"]
    assert statuses == [("started", "4711"), ("finished", "4711")] * 2, reports
    nodes = [r for r in reports if r["method"] == "update_worker_node"]
    assert len(nodes) == 1 and nodes[0]["n_logical_cpus"] >= 1 and nodes[0]["cpu_model"]  # v1 only
    # sent once the first job's payload runs, never in the way of its start: after the job's "starting" update
    # (the v1 pilot's job is the first one)
    first = httpx.get(f"{job_server.url}/jobs", timeout=10).json()[0]
    starting = min(u["time"] for u in first["updates"] if u.get("job_status") == "starting")
    assert nodes[0]["time"] > starting, (nodes[0], first["updates"])
