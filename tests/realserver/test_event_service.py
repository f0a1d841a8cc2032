"""Event-service jobs through ``nodepilot start`` and the real server: every range the server made
settled in its event table, each finished one with its output's file record on the event-service
endpoint the queue names (``objstoreID``), and the job handed to merging by one Adder pass.

Two jobs: one whose payload processes every range (the whole way to ``merging``), one whose
payload fails every third range (those must read ``failed`` with the payload's code). The server
gives failed ranges back for a retry by another job, so that job is not merged after its first
consumer: for it the test checks the ranges only.
"""

from __future__ import annotations

from collections import Counter

from tests.realserver import cric, jobs, pilot
from tests.realserver.harness import RealServer

N_EVENTS, PER_RANGE = 80, 10  # 8 ranges
ES_RECOVERABLE = 1224  # the code examples/es_payload.sh fails a range with


def run_es_job(server: RealServer, site: pilot.Site, name: str, fail_every: int) -> tuple[int, pilot.PilotRun]:
    server.db.psql(jobs.es_task_sql(N_EVENTS))
    payload = f"{pilot.EXAMPLES / 'es_payload.sh'} --fail-every {fail_every}"
    (panda_id,) = server.submit(jobs.es_job(name, payload, N_EVENTS, PER_RANGE))
    return panda_id, pilot.run(site, server.http.url, "--max-jobs", "1")


def summary(ranges: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(r["job_processid"], r["status_name"], r["error_code"], r["ziprow_id"]) for r in ranges]


def check_settled(server: RealServer, site: pilot.Site, ranges: list[dict[str, str]], n_failed: int) -> None:
    """Every range finished (its output recorded as stored on the ES endpoint) or failed with the payload's code."""
    assert len(ranges) == N_EVENTS // PER_RANGE, summary(ranges)
    statuses = Counter(r["status_name"] for r in ranges)
    assert statuses == {"finished": len(ranges) - n_failed, **({"failed": n_failed} if n_failed else {})}, \
        summary(ranges)
    for item in ranges:
        if item["status_name"] == "failed":
            assert item["error_code"] == str(ES_RECOVERABLE), item
            continue
        assert item["ziprow_id"], f"finished range without its output's file record: {item}"
        (row,) = server.db.rows(f"SELECT * FROM doma_panda.filestable4 WHERE row_id = {int(item['ziprow_id'])}")
        assert (row["type"], row["destinationse"]) == ("zipoutput", str(cric.ES_STORE_ID)), row
        stored = list(site.es_store.rglob(row["lfn"]))
        assert len(stored) == 1 and stored[0].stat().st_size == int(row["fsize"]), (row, stored)


def test_event_service_job_ranges_finished_and_job_merging(server, site, record):
    panda_id, run = run_es_job(server, site, "np.es", fail_every=0)
    ranges = server.events(jobs.ES_TASK_ID)
    after_pilot = server.job(panda_id)
    server.adder_pass()
    job = server.job(panda_id)
    record(f"ranges {dict(Counter(r['status_name'] for r in ranges))}; job {after_pilot.get('jobstatus')} -> "
           f"after Adder {job.get('jobstatus')} (pilot code {job.get('piloterrorcode')})", run)

    assert run.exit_code == 0, run.output[-3000:]
    check_settled(server, site, ranges, n_failed=0)
    assert job["jobstatus"] == "merging", {k: job.get(k) for k in (
        "table", "jobstatus", "piloterrorcode", "piloterrordiag", "nevents", "jobsubstatus")}


def test_event_service_ranges_failed_by_the_payload_settled(server, site, record):
    fail_every = 3
    panda_id, run = run_es_job(server, site, "np.esfail", fail_every=fail_every)
    ranges = server.events(jobs.ES_TASK_ID)
    job = server.job(panda_id)
    record(f"ranges {dict(Counter(r['status_name'] for r in ranges))}; job {job.get('jobstatus')} "
           f"(pilot code {job.get('piloterrorcode')})", run)

    assert run.exit_code == 0, run.output[-3000:]
    check_settled(server, site, ranges, n_failed=len(ranges) // fail_every)
