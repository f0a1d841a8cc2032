"""An event-service job through the whole pilot: ranges to the payload, outputs staged as they come,
every range settled once in the job server's ledger (``GET /jobs/{id}/ranges``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.harness import ES_SCOPE_OUT, es_job, ledger, ranges, settled
from tests.e2e.conftest import EXAMPLES, NODEPILOT, JobServer, add_jobs, final_update, run_pilot, write_queuedata

SCOPE_OUT = ES_SCOPE_OUT


def assert_settled_once(server: JobServer, panda_id: int, se: Path) -> dict[str, list[dict]]:
    """Every range in the server's ledger is final, and every attempt of it handed out was reported
    exactly once (none lost, none twice); a finished one's output is on the SE with the size reported.
    Returns the final report of each attempt, by final status."""
    by_status, problems = settled(server, panda_id, se)
    assert not problems, problems
    return by_status


def test_standalone_event_service_job(site):
    job_file, ranges_file = site / "es_job.json", site / "ranges.json"
    job_file.write_text(json.dumps(es_job(6001, "--fail-every 7")))
    ranges_file.write_text(json.dumps(ranges(30)))
    result = subprocess.run([*NODEPILOT, "run", str(job_file), "--ranges", str(ranges_file),
                             "--workdir", str(site / "work"), "--se-dir", str(site / "se")],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    final = [json.loads(x)["fields"] for x in (site / "work" / "updates.jsonl").read_text().splitlines()][-1]
    assert final["state"] == "finished", final
    assert final["nEvents"] == 26 * 10  # every 7th of 30 ranges failed: 26 finished
    reports = [json.loads(x) for x in (site / "work" / "ranges-6001.jsonl").read_text().splitlines()]
    statuses: dict[str, str] = {}
    for line in reports:  # version 1: zipFile records with their ranges; version 0: single ranges
        for record in line["eventRanges"]:
            for r in record.get("eventRanges", [record]):
                assert r["eventRangeID"] not in statuses, f"{r['eventRangeID']} reported twice"
                statuses[r["eventRangeID"]] = r["eventStatus"]
    assert len(statuses) == 30
    assert sum(s == "finished" for s in statuses.values()) == 26
    assert sum(s == "failed" for s in statuses.values()) == 4
    staged = list((site / "se").rglob("out_*"))
    assert len(staged) == 26
    assert not list((site / "work" / "PanDA_Pilot-6001").glob("out_*"))  # removed once staged


def test_event_service_job_through_the_job_server(site, job_server):
    add_jobs(site, {**es_job(6002, "--n 3 --fail-every 9"), "_event_ranges": ranges(40)})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6002])
    assert update["job_status"] == "finished", update
    settled = assert_settled_once(job_server, 6002, site / "se")
    assert len(ledger(job_server, 6002)) == 40 and settled["failed"]  # failed ones were redispatched
    assert update["n_events"] == sum(u["zipFile"]["numEvents"] for u in settled["finished"])


def test_bash_payload_through_the_line_protocol(site, job_server):
    add_jobs(site, {**es_job(6003, "--fail-every 6", payload="es_payload.sh", transformation="bash"),
                    "_event_ranges": ranges(20)})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6003])
    assert update["job_status"] == "finished", update
    settled = assert_settled_once(job_server, 6003, site / "se")
    assert settled["failed"] and {u["errorCode"] for u in settled["failed"]} == {1224}
    assert update["n_events"] == 10 * len(settled["finished"])
    stdout = (site / "work" / "PanDA_Pilot-6003" / "payload.stdout").read_text()
    assert "es_payload.sh: no more ranges after" in stdout


def test_demo_jobs_through_the_legacy_dialect(site, job_server):
    add_jobs(site, EXAMPLES / "jobs" / "02_merge_inputs.json", EXAMPLES / "jobs" / "03_failing.json")
    result = run_pilot(site, job_server.url, "--api", "legacy")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_server.jobs()
    assert final_update(jobs[1002])["job_status"] == "finished"
    failing = final_update(jobs[1003])
    assert failing["job_status"] == "failed"
    assert int(failing.get("pilot_error_code") or failing.get("pilotErrorCode")) == 1305


def test_outputs_in_zips_when_the_queue_asks_for_it(site, job_server):
    add_jobs(site, {**es_job(6004), "_event_ranges": ranges(12)})
    qd = write_queuedata(site, es={"zip_outputs": 4, "zip_seconds": 5})
    result = run_pilot(site, job_server.url, "--queuedata", qd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert final_update(job_server.jobs()[6004])["job_status"] == "finished"
    settled = assert_settled_once(job_server, 6004, site / "se")
    zips = {u["zipFile"]["lfn"] for u in settled["finished"]}
    assert len(settled["finished"]) == 12 and len(zips) < 12, zips  # ranges share zips
    assert all(name.endswith(".zip") for name in zips), zips
