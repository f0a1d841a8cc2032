"""An event-service job is done only as far as the server took it: the real server's behaviours
(docs/protocol.md "Event ranges") played by ``nodepilot serve``, checked in its ledger."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import add_jobs, final_update, run_pilot, start_job_server, write_queuedata
from tests.e2e.test_event_service import assert_settled_once, es_job, ledger, ranges


def test_updates_answered_500_after_their_commit_settle_every_range_once(site):
    """panda-server 1.0.4 commits each range update, then answers HTTP 500: the pilot looks the ranges
    up instead of sending them again, and the job's declared merged output is the merge job's."""
    job = {**es_job(6101, "--fail-every 5"), "_event_ranges": ranges(15),
           "outFiles": "HITS.6101.pool.root,es6101.log.tgz", "scopeOut": "demo.es"}
    add_jobs(site, job)
    server = start_job_server(site / "jobs", site, "--event-update-500")
    try:
        result = run_pilot(site, server.url)
        assert result.returncode == 0, result.stderr[-3000:]
        update = final_update(server.jobs()[6101])
        assert update["job_status"] == "finished", update  # no 1165 for HITS: the merge job makes it
        settled = assert_settled_once(server, 6101, site / "se")  # each update applied once, none re-sent
        assert len(settled["finished"]) == 12
        assert update["n_events"] == sum(u["zipFile"]["numEvents"] for u in settled["finished"])
        assert all(u["zipFile"]["objstoreID"] == 1 for u in settled["finished"])
        assert "HITS.6101.pool.root" not in (update.get("job_output_report") or "")
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_a_job_whose_finished_ranges_the_server_never_took_is_not_finished(site, job_server):
    add_jobs(site, {**es_job(6102), "_event_ranges": ranges(4)})
    outage = {"status": 500, "seconds": 600, "methods": ["update_event_ranges"]}
    httpx.post(f"{job_server.url}/faults", json=outage, timeout=10).raise_for_status()
    result = run_pilot(site, job_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6102])
    assert update["job_status"] == "failed" and int(update["pilot_error_code"]) == 1228, update
    assert "took none of the 4 finished" in update["pilot_error_diag"], update
    assert not update.get("n_events")
    assert all(item["status"] == "running" and not item["updates"] for item in ledger(job_server, 6102))


def test_without_an_objstore_id_the_job_fails_clearly_before_any_range_is_taken(site, job_server):
    qd = write_queuedata(site)
    qd_text = (site / "queuedata.json").read_text().replace(', "id": 1', "")
    (site / "queuedata.json").write_text(qd_text)
    add_jobs(site, {**es_job(6103), "_event_ranges": ranges(3)})
    result = run_pilot(site, job_server.url, "--queuedata", qd)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[6103])
    assert update["job_status"] == "failed" and "objstoreID" in update["pilot_error_diag"], update
    assert all(item["status"] == "ready" for item in ledger(job_server, 6103))
