"""An event-service job through the whole pilot: ranges to the payload, outputs staged as they come."""

from __future__ import annotations

import json
import subprocess

from tests.e2e.conftest import EXAMPLES, NODEPILOT


def es_job(panda_id: int, payload_args: str = "") -> dict:
    return {
        "PandaID": panda_id, "attemptNr": 1, "jobsetID": 7, "taskID": 70, "eventService": "True",
        "transformation": "python3", "jobPars": f"{EXAMPLES / 'es_payload.py'} {payload_args}",
        "outFiles": f"es{panda_id}.log.tgz", "logFile": f"es{panda_id}.log.tgz", "scopeLog": "demo.log",
        "scopeOut": "demo.es",
    }


def ranges(n: int, events_per_range: int = 10) -> list[dict]:
    return [{"eventRangeID": f"70-{i}-1-{i}-1", "startEvent": i * events_per_range + 1,
             "lastEvent": (i + 1) * events_per_range, "LFN": "EVNT.pool.root", "GUID": "g", "scope": "demo"}
            for i in range(n)]


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
    from tests.e2e.conftest import add_jobs, final_update, run_pilot

    add_jobs(site, {**es_job(6002, "--n 3 --fail-every 9"), "_event_ranges": ranges(40)})
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6002])
    assert update["job_status"] == "finished", update
    import httpx

    states = httpx.get(f"{job_server.url}/jobs/6002/ranges", timeout=10).json()
    items = states if isinstance(states, list) else states.get("ranges", [])
    by_status: dict[str, int] = {}
    for item in items:
        by_status[item["status"]] = by_status.get(item["status"], 0) + 1
    assert sum(by_status.values()) >= 40 and not by_status.get("running") and not by_status.get("ready"), by_status
    assert update["n_events"] == by_status.get("finished", 0) * 10


def test_demo_jobs_through_the_legacy_dialect(site, job_server):
    from tests.e2e.conftest import add_jobs, final_update, run_pilot

    add_jobs(site, EXAMPLES / "jobs" / "02_merge_inputs.json", EXAMPLES / "jobs" / "03_failing.json")
    result = run_pilot(site, job_server.url, "--api", "legacy")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_server.jobs()
    assert final_update(jobs[1002])["job_status"] == "finished"
    failing = final_update(jobs[1003])
    assert failing["job_status"] == "failed"
    assert int(failing.get("pilot_error_code") or failing.get("pilotErrorCode")) == 1305
