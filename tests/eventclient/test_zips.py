"""Zipped batches of outputs (``zip_outputs``): the real eventclient and stager as processes, the
example payload; the source is a ranges file."""

from __future__ import annotations

import zipfile
import zlib
from collections import defaultdict

from nodepilot.errors import ErrorCode
from nodepilot.http import uds_client
from tests.conftest import running_service
from tests.eventclient.helpers import (
    EVENTS_PER_RANGE,
    JOB,
    N_RANGES,
    assert_reported_once,
    begin,
    end,
    ids,
    reports,
    run_payload,
    se_file,
    workdir,
)
from tests.waiting import wait_until


def zip_reports(report_file) -> dict[str, list[dict]]:
    """The version 1 records as sent, by zip name."""
    import json

    by_zip: dict[str, list[dict]] = defaultdict(list)
    for line in report_file.read_text().splitlines():
        record = json.loads(line)
        if record["version"] == 1:
            for item in record["eventRanges"]:
                by_zip[item["zipFile"]["lfn"]].append(item)
    return dict(by_zip)


def test_outputs_go_out_in_zips_of_k(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files, zip_outputs=7)["socket"]
        proc = run_payload(sock, wd, "--n", "3", "--fail-every", "10")
        assert proc.returncode == 0, proc.stderr
        done = end(rds)
    failed = {i for i in range(N_RANGES) if (i + 1) % 10 == 0}
    assert (done["finished"], done["failed"], done["error_code"]) == (45, 5, 0)
    assert done["n_events"] == 45 * EVENTS_PER_RANGE
    assert_reported_once(files[1], ids(*(set(range(N_RANGES)) - failed)),
                         dict.fromkeys(ids(*failed), ErrorCode.ES_RECOVERABLE))
    zips = zip_reports(files[1])
    assert sorted(len(items[0]["eventRanges"]) for items in zips.values()) == [3, 7, 7, 7, 7, 7, 7]
    assert sorted(f["lfn"] for f in done["files"]) == sorted(zips)  # one file report per zip
    for name, (item,) in zips.items():  # each zip reported once, with every range in it
        assert name.startswith(f"EventService_premerge_{JOB}_") and name.endswith(".zip")
        stored = se_file(pilot_config, name).read_bytes()
        members = [r["eventRangeID"] for r in item["eventRanges"]]
        assert {r["eventStatus"] for r in item["eventRanges"]} == {"finished"}
        assert item["zipFile"] == {"lfn": name, "fsize": len(stored), "adler32": f"{zlib.adler32(stored):08x}",
                                   "numEvents": len(members) * EVENTS_PER_RANGE}
        with zipfile.ZipFile(se_file(pilot_config, name)) as zf:
            assert zf.namelist() == [f"out_{rid}.dat" for rid in members]
            for rid in members:
                assert zf.read(f"out_{rid}.dat").decode().splitlines()[0].startswith(f"{rid} ")
    assert not list(wd.glob("*.zip")) and not list(wd.glob("out_*")) and not list(wd.glob(".*.part"))


def test_a_short_zip_goes_out_after_zip_seconds(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config), \
            uds_client(pilot_config.socket_path("eventclient")) as service:
        sock = begin(rds, pilot_config, files, zip_outputs=100, zip_seconds=0.5)["socket"]
        with uds_client(sock) as api:
            taken = [r["eventRangeID"] for r in api.post("/ranges", params={"n": 2}).json()["ranges"]]
            for rid in taken:
                (wd / f"o_{rid}").write_bytes(rid.encode())
                assert api.post(f"/ranges/{rid}/done", json={"output": f"o_{rid}"}).status_code == 200
        wait_until(lambda: service.get("/status").json()["jobs"][str(JOB)]["counts"]["reported_finished"] == 2,
                   timeout=10, what="the short zip staged and reported before the end")
        done = end(rds)
    assert (done["finished"], done["failed"], len(done["files"])) == (2, 8, 1)
    (name,) = zip_reports(files[1])
    assert zipfile.ZipFile(se_file(pilot_config, name)).namelist() == [f"o_{rid}" for rid in taken]


def test_a_zip_that_cannot_be_made_fails_its_ranges(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        sock = begin(rds, pilot_config, files, zip_outputs=2)["socket"]
        with uds_client(sock) as api:
            first, second, third = [r["eventRangeID"] for r in api.post("/ranges", params={"n": 3}).json()["ranges"]]
            for rid in (first, second, third):
                (wd / f"o_{rid}").write_bytes(b"x" * 10)
            assert api.post(f"/ranges/{first}/done", json={"output": f"o_{first}"}).status_code == 200
            (wd / f"o_{first}").unlink()  # the payload removed it before the zip was made
            assert api.post(f"/ranges/{second}/done", json={"output": f"o_{second}"}).status_code == 200
            assert api.post(f"/ranges/{third}/done", json={"output": f"o_{third}"}).status_code == 200
        done = end(rds)
    assert (done["finished"], done["failed"]) == (1, 9)
    seen = reports(files[1])
    assert seen[first] == seen[second] == [{"status": "failed", "errorCode": ErrorCode.MISSING_OUTPUT}]
    assert seen[third][0]["status"] == "finished"  # the last one, alone in the zip made at the end
    assert (wd / f"o_{second}").exists()  # a failed upload leaves the outputs (the log tarball gets them)
