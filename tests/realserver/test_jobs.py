"""Ordinary jobs through ``nodepilot start`` and the real server, checked in the server's tables
after one Adder pass (the daemon that archives what the pilot reported)."""

from __future__ import annotations

import json
import uuid
import zlib

from tests.realserver import jobs, pilot

PAYLOAD_FAILED = 1305  # nodepilot/errors.py: a payload that exits non-zero


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def check_file_rows(server, site, panda_id: int) -> None:
    """Each output and the log as the server archived it: the GUID the pilot reported, and the
    size and adler32 of the copy on the storage endpoint; inputs as submitted."""
    rows = server.files(panda_id)
    assert {r["type"] for r in rows} >= {"log"}, rows
    for row in rows:
        if row["type"] == "input":
            guid, size, checksum = jobs.INPUTS[row["lfn"]]
            assert (row["guid"], int(row["fsize"]), row["checksum"]) == (guid, size, f"ad:{checksum}"), row
            continue
        stored = site.stored(row["scope"], row["lfn"])
        assert stored.is_file(), f"{row['lfn']} not on the SE at {stored}"
        data = stored.read_bytes()
        assert uuid.UUID(row["guid"]), row
        assert int(row["fsize"]) == len(data), row
        assert row["checksum"] == f"ad:{adler32(data)}", row


def test_normal_job_archived_finished_with_file_metadata(server, site, record):
    spec = jobs.job("np.normal", "bash", "-c 'cat demo.input.1.txt > np.normal.out.txt; echo done'",
                    outputs=("np.normal.out.txt",), inputs=("demo.input.1.txt",))
    (panda_id,) = server.submit(spec)
    run = pilot.run(site, server.http.url, "--max-jobs", "1")
    server.adder_pass()
    job = server.job(panda_id)
    record(f"{job.get('table')} {job.get('jobstatus')}", run)

    assert run.exit_code == 0, run.output[-3000:]
    assert (job["table"], job["jobstatus"]) == ("jobsarchived4", "finished"), job
    assert {r["type"] for r in server.files(panda_id)} == {"input", "output", "log"}
    check_file_rows(server, site, panda_id)


def test_payload_exit_3_archived_failed_with_codes(server, site, record):
    (panda_id,) = server.submit(jobs.job("np.exit3", "bash", "-c 'echo failing on purpose; exit 3'"))
    run = pilot.run(site, server.http.url, "--max-jobs", "1")
    server.adder_pass()
    job = server.job(panda_id)
    record(f"{job.get('table')} {job.get('jobstatus')} pilot {job.get('piloterrorcode')} "
           f"exe {job.get('exeerrorcode')} trans {job.get('transexitcode')}", run)

    assert run.exit_code == 0, run.output[-3000:]
    assert (job["table"], job["jobstatus"]) == ("jobsarchived4", "failed"), job
    assert int(job["piloterrorcode"]) == PAYLOAD_FAILED, job
    assert int(job["exeerrorcode"]) == 3, job
    assert job["transexitcode"] == "3", job
    check_file_rows(server, site, panda_id)  # the log is still staged out and archived


def test_three_jobs_in_one_pilot(server, site, record):
    specs = [jobs.job(f"np.multi{i}", "bash", f"-c 'echo job {i} > np.multi{i}.out.txt'",
                      outputs=(f"np.multi{i}.out.txt",)) for i in range(3)]
    ids = server.submit(*specs)
    run = pilot.run(site, server.http.url)  # no --max-jobs: it runs until the server has no job left
    server.adder_pass()
    rows = [server.job(i) for i in ids]
    record(", ".join(f"{r.get('table')} {r.get('jobstatus')}" for r in rows), run)

    assert run.exit_code == 0, run.output[-3000:]
    assert [(r["table"], r["jobstatus"]) for r in rows] == [("jobsarchived4", "finished")] * 3, rows
    summary = json.loads((site.run_dir / "summary.json").read_text())  # this one pilot ran them all
    assert sorted(int(j["panda_id"]) for j in summary if j.get("panda_id")) == sorted(ids), summary
    for panda_id in ids:
        check_file_rows(server, site, panda_id)
