"""An event-service job through ``nodepilot start`` and the real server: every range the server
made for it settled in its event table, and the job handed to merging by one Adder pass."""

from __future__ import annotations

from collections import Counter

from tests.realserver import cric, jobs, pilot

N_EVENTS, PER_RANGE, FAIL_EVERY = 80, 10, 3  # 8 ranges; the payload fails every 3rd it gets
ES_RECOVERABLE = 1224  # the code examples/es_payload.sh fails a range with


def test_event_service_ranges_settled_and_job_merging(server, site, record):
    server.db.psql(jobs.es_task_sql(N_EVENTS))
    payload = f"{pilot.EXAMPLES / 'es_payload.sh'} --fail-every {FAIL_EVERY}"
    (panda_id,) = server.submit(jobs.es_job("np.es", payload, N_EVENTS, PER_RANGE))
    run = pilot.run(site, server.http.url, "--max-jobs", "1")
    ranges = server.events(jobs.ES_TASK_ID)
    after_pilot = server.job(panda_id)
    server.adder_pass()
    job = server.job(panda_id)
    statuses = Counter(r["status_name"] for r in ranges)
    record(f"ranges {dict(statuses)}; job {after_pilot.get('jobstatus')} -> after Adder {job.get('table')} "
           f"{job.get('jobstatus')} (pilot {job.get('piloterrorcode')})", run)

    assert run.exit_code == 0, run.output[-3000:]
    assert len(ranges) == N_EVENTS // PER_RANGE, ranges
    n_failed = len(ranges) // FAIL_EVERY
    assert statuses == {"finished": len(ranges) - n_failed, "failed": n_failed}, [
        (r["job_processid"], r["status_name"], r["error_code"], r["objstore_id"]) for r in ranges]
    for item in ranges:
        if item["status_name"] == "finished":  # stored on the event-service endpoint the queue names
            assert item["objstore_id"] == str(cric.ES_STORE_ID), item
        else:  # failed by the payload, with the payload's code
            assert item["error_code"] == str(ES_RECOVERABLE), item
    assert job["jobstatus"] == "merging", {k: job.get(k) for k in (
        "table", "jobstatus", "piloterrorcode", "piloterrordiag", "nevents", "jobsubstatus")}
