"""``nodepilot start`` on queues defined in CRIC terms, against ``nodepilot serve``, with real storage:
inputs over XRootD, outputs over WebDAV, the log to the ``pl`` endpoint; the old ``pr``/``pw`` roles;
the time floor; a closed queue."""

from __future__ import annotations

import time

import pytest

from services.stager.paths import deterministic_path
from tests.e2e.conftest import EXAMPLES, add_jobs, final_update
from tests.queue.cric import ddm_endpoint, file_protocol, queue_record, url_protocol, write
from tests.queue.helpers import QUEUE, acquire_params, cric_start, error_lines, merge_job, short_job, start


def local_queue(site, **over) -> tuple[dict, dict]:
    """A queue on one file endpoint (the site's SE) for every activity."""
    se = file_protocol(site / "se")
    ddms = {"SITE_SE": ddm_endpoint(11, "SITE_SE", {"read_lan": [se], "write_lan": [se]})}
    record = queue_record(QUEUE, {a: ["SITE_SE"] for a in ("read_lan", "write_lan", "pl")},
                          {a: ["mv"] for a in ("read_lan", "write_lan", "pl")}, **over)
    return record, ddms


def test_inputs_over_xrootd_outputs_over_webdav_log_to_pl(site, job_server, xrootd_server, webdav_server):
    for f in (EXAMPLES / "se").rglob("*.txt"):
        xrootd_server.put(str(f.relative_to(EXAMPLES / "se")), f.read_bytes())
    logs = site / "logs"
    ddms = {
        "SITE_XRD": ddm_endpoint(201, "SITE_XRD", {"read_lan": [url_protocol(xrootd_server.url)]}),
        "SITE_DAV": ddm_endpoint(202, "SITE_DAV", {"write_lan": [url_protocol(webdav_server.url)]}),
        "SITE_LOGS": ddm_endpoint(203, "SITE_LOGS", {"write_lan": [file_protocol(logs)]}),
    }
    record = queue_record(QUEUE, {"read_lan": ["SITE_XRD"], "write_lan": ["SITE_DAV"], "pl": ["SITE_LOGS"]},
                          {"read_lan": ["xrdcp"], "write_lan": ["gfalcopy"], "pl": ["mv"]})
    add_jobs(site, merge_job(8101, "SITE_XRD", "SITE_DAV", "SITE_DAV"))
    result = cric_start(site, job_server.url, record, ddms)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[8101])
    assert update["job_status"] == "finished", update.get("pilot_error_diag")
    inputs = [f.read_bytes() for f in sorted((EXAMPLES / "se").rglob("*.txt"), key=lambda p: p.name)]
    assert webdav_server.read(deterministic_path("demo.output", "merged.txt")) == b"".join(inputs)
    # the job named SITE_DAV for its log too, but pl lists only SITE_LOGS: the queue's endpoint is primary
    assert (logs / deterministic_path("demo.log", "demo.8101.log.tgz")).is_file()
    assert not webdav_server.exists(deterministic_path("demo.log", "demo.8101.log.tgz"))
    assert acquire_params(site)[0]["site_name"] == QUEUE


def test_a_queue_with_only_the_old_pr_pw_roles(site, job_server):
    se = file_protocol(site / "se")
    ddms = {"SITE_SE": ddm_endpoint(12, "SITE_SE", {"read_lan": [se], "write_lan": [se]})}
    record = queue_record(QUEUE, {"pr": ["SITE_SE"], "pw": ["SITE_SE"]}, {"pr": ["mv"], "pw": ["mv"]})
    add_jobs(site, merge_job(8102, "SITE_SE", "SITE_SE", "SITE_SE"))
    result = cric_start(site, job_server.url, record, ddms)
    assert result.returncode == 0, result.stderr[-3000:]
    assert final_update(job_server.jobs()[8102])["job_status"] == "finished"
    assert (site / "se" / deterministic_path("demo.output", "merged.txt")).is_file()
    assert (site / "se" / deterministic_path("demo.log", "demo.8102.log.tgz")).is_file()


def test_timefloor_jobs_taken_inside_the_floor_none_after(site, job_server):
    """A 1-minute floor: three jobs taken while inside it (the third outlasts it), the fourth never."""
    record, ddms = local_queue(site, timefloor=1)
    add_jobs(site, short_job(8111), short_job(8112), short_job(8113, seconds=62), short_job(8114))
    started = time.monotonic()
    result = cric_start(site, job_server.url, record, ddms)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started > 60
    jobs = job_server.jobs()
    assert sorted(jobs) == [8111, 8112, 8113]
    assert all(final_update(jobs[i])["job_status"] == "finished" for i in jobs)
    params = acquire_params(site)
    assert "task_id" not in params[0] and params[1]["task_id"] == params[2]["task_id"] == 700  # same task


def test_timefloor_zero_is_one_job_per_pilot(site, job_server):
    record, ddms = local_queue(site, timefloor=0)
    add_jobs(site, short_job(8121), short_job(8122))
    result = cric_start(site, job_server.url, record, ddms)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(job_server.jobs()) == [8121]


@pytest.mark.parametrize(("over", "says"), [({"status": "offline"}, "is offline"),
                                            ({"state": "DISABLED"}, "is not ACTIVE (state DISABLED)")])
def test_a_closed_queue_asks_for_no_job(site, job_server, over, says):
    record, ddms = local_queue(site, **over)
    add_jobs(site, short_job(8131))
    result = cric_start(site, job_server.url, record, ddms, timeout=60)
    assert result.returncode == 7, result.stderr[-3000:]
    assert len(error_lines(result)) == 1 and says in error_lines(result)[0] and "no job asked for" in result.stderr
    assert job_server.jobs() == {}


def test_queue_from_a_local_http_server_also_while_it_is_down(site, job_server):
    """The schedconfig-cache URL served over HTTP: the first pilot downloads (and caches) the definition,
    the second finds the server down and runs on the cached copy."""
    from tests.queue.test_sources import Server

    record, ddms = local_queue(site)
    www = site / "www"
    (www / "cache" / "schedconfig").mkdir(parents=True)
    write(www / "cache" / "schedconfig" / f"{QUEUE}.all.json", record)
    write(www / "ddmendpoints.json", ddms)
    http = Server(www)
    urls = ["--queuedata-url", f"{http.url}/cache/schedconfig/{{pandaqueue}}.all.json",
            "--storagedata-url", f"{http.url}/ddmendpoints.json"]
    try:
        add_jobs(site, short_job(8141))
        assert start(site, job_server.url, *urls).returncode == 0
    finally:
        http.stop()
    add_jobs(site, short_job(8142))
    result = start(site, job_server.url, *urls)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(final_update(job_server.jobs()[i])["job_status"] == "finished" for i in (8141, 8142))
