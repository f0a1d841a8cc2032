"""Direct access through the whole pilot: the job (transferType=direct) and the queue allow it, so
the inputs are checked on the SE, not copied, and the payload finds them through the catalogs."""

from __future__ import annotations

import json

from tests.e2e.conftest import EXAMPLES, add_jobs, final_update, run_pilot, write_queuedata

# reads its inputs where input_files.json says, and checks PoolFileCatalog.xml says the same
PAYLOAD = ("import json, xml.etree.ElementTree as E; m=json.load(open('input_files.json')); "
           "pfc={f.find('logical/lfn').get('name'): f.find('physical/pfn').get('name') "
           "for f in E.parse('PoolFileCatalog.xml').getroot()}; assert pfc == m, (pfc, m); "
           "open('merged.txt','w').write(''.join(open(m[k]).read() for k in sorted(m))); "
           "json.dump(m, open('where.json','w'))")


def merge_job(panda_id: int) -> dict:
    job = json.loads((EXAMPLES / "jobs" / "02_merge_inputs.json").read_text())
    return {**job, "PandaID": panda_id, "transferType": "direct", "jobPars": f'-c "{PAYLOAD}"',
            "outFiles": f"merged.txt,l{panda_id}.tgz", "logFile": f"l{panda_id}.tgz"}


def run(site, job_server, panda_id: int, direct: bool) -> tuple[dict, dict]:
    add_jobs(site, merge_job(panda_id))
    result = run_pilot(site, job_server.url, "--queuedata", write_queuedata(site, direct_access_lan=direct))
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[panda_id])
    assert update["job_status"] == "finished", update.get("pilot_error_diag")
    where = json.loads((site / "work" / f"PanDA_Pilot-{panda_id}" / "where.json").read_text())
    return update, where


def test_inputs_are_read_in_place_when_job_and_queue_allow_it(site, job_server):
    _update, where = run(site, job_server, 7600, direct=True)
    se = str((site / "se").resolve())
    assert sorted(where) == ["demo.input.1.txt", "demo.input.2.txt"]
    assert all(path.startswith(se) for path in where.values()), where  # the SE's copies, not local ones
    assert not (site / "work" / "PanDA_Pilot-7600" / "demo.input.1.txt").exists()


def test_inputs_are_copied_when_the_queue_does_not_allow_it(site, job_server):
    _update, where = run(site, job_server, 7601, direct=False)
    workdir = str(site / "work" / "PanDA_Pilot-7601")
    assert all(path.startswith(workdir) for path in where.values()), where
