"""The whole pilot on a queue whose copytool is ``rucio`` (a CRIC record and DDM endpoints, as a site
gives them): inputs found through Rucio (the LAN replica preferred, a corrupt one passed over),
outputs and the log uploaded and registered, every transfer traced in Rucio's trace file."""

from __future__ import annotations

import json
import time
import uuid

from bench.rucio_server import SCOPE
from services.stager.paths import deterministic_path
from tests.e2e.conftest import add_jobs, final_update, run_pilot
from tests.queue.cric import ddm_endpoint, queue_record, write
from tests.rucio.test_rucio_stager import LAN, WAN, seed
from tests.stager.test_stager_service import adler32

PAYLOAD = ("import json; d=open('{a}').read()+open('{b}').read(); open('{out}','w').write(d); "
           "json.dump({{'exitCode': 0, 'exitMsg': 'OK'}}, open('jobReport.json','w'))")


def cric_queue(tmp_path, monkeypatch, rucio_server) -> list[str]:
    """The queue: Rucio for every activity; reads on XRD_RSE's LAN (POSIX_RSE is WAN, allowed),
    outputs to XRD_RSE, the log to POSIX_RSE. Returns the pilot's queue options."""
    record = queue_record("RUCIO_Q", {"read_lan": [LAN], "write_lan": [LAN], "pl": [WAN]},
                          {"read_lan": ["rucio"], "write_lan": ["rucio"], "pl": ["rucio"]},
                          allow_wan=True, atlas_site="RUCIO_SITE")
    ddms = {name: ddm_endpoint(i, name, {}) for i, name in ((1, LAN), (2, WAN))}
    monkeypatch.setenv("RUCIO_CONFIG", str(rucio_server.client_config))
    return ["--queuedata-url", write(tmp_path / "RUCIO_Q.all.json", record),
            "--storagedata-url", write(tmp_path / "ddm.json", ddms)]


def test_a_job_through_rucio(site, job_server, rucio_server, tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    a, b, out, logname = f"a-{tag}.txt", f"b-{tag}.txt", f"out-{tag}.txt", f"log-{tag}.tgz"
    data = {a: b"first input\n" * 500, b: b"second input\n" * 700}
    for lfn in data:
        seed(rucio_server, lfn, data[lfn], (LAN, WAN))
    rucio_server.xrootd.corrupt(deterministic_path(SCOPE, b))  # b's LAN replica is corrupt: read from WAN
    job = {"PandaID": 9401, "jobName": "rucio.e2e", "taskID": 94, "attemptNr": 1, "prodSourceLabel": "managed",
           "transformation": "python3", "jobPars": f'-c "{PAYLOAD.format(a=a, b=b, out=out)}"',
           "inFiles": f"{a},{b}", "GUID": "g-a,g-b", "scopeIn": f"{SCOPE},{SCOPE}",
           "fsize": f"{len(data[a])},{len(data[b])}", "checksum": f"ad:{adler32(data[a])},ad:{adler32(data[b])}",
           "ddmEndPointIn": f"{LAN},{LAN}", "realDatasetsIn": "tests.in,tests.in",
           "outFiles": f"{out},{logname}", "logFile": logname, "logGUID": "g-log", "scopeOut": SCOPE,
           "scopeLog": SCOPE, "ddmEndPointOut": f"{LAN},{WAN}", "realDatasets": "tests.out,tests.log",
           "destinationDblock": "tests.out_sub0,tests.log_sub0", "maxCpuCount": 600, "maxWalltime": 600,
           "coreCount": 1}
    add_jobs(site, job)
    result = run_pilot(site, job_server.url, *cric_queue(tmp_path, monkeypatch, rucio_server), "--queue", "RUCIO_Q",
                       timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[9401])
    assert update["job_status"] == "finished", update.get("pilot_error_diag")
    report = json.loads(update["job_output_report"])
    listed = {r["name"]: r for r in rucio_server.tool("list", {"dids": [{"scope": SCOPE, "name": out},
                                                                        {"scope": SCOPE, "name": logname}]})}
    merged = data[a] + data[b]
    assert listed[out]["adler32"] == adler32(merged) and list(listed[out]["rses"]) == [LAN]
    assert list(listed[logname]["rses"]) == [WAN] and listed[logname]["adler32"] == report[logname]["adler32"]
    assert report[out]["adler32"] == adler32(merged)
    wanted = {(a, LAN, "DONE"), (b, LAN, "AD_MISMATCH"), (b, WAN, "DONE"), (out, LAN, "DONE"),
              (logname, WAN, "DONE")}
    deadline = time.monotonic() + 20
    while True:  # the pilot has ended: its stager delivered or spooled the traces before stopping
        seen = {(t.get("filename"), t.get("remoteSite"), t.get("clientState")) for t in rucio_server.traces()}
        if wanted <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert wanted <= seen, wanted - seen

