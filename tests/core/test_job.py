import base64

import pytest

from nodepilot.errors import ErrorCode
from nodepilot.job import Checksum, JobDefinitionError, parse_checksum, parse_job

BASE = {
    "PandaID": "4242", "attemptNr": "2", "transformation": "run.sh", "jobPars": "--in a",
    "inFiles": "a.root,b.root", "GUID": "g-a,g-b", "fsize": "10,20", "checksum": "ad:0000000a,md5:" + "f" * 32,
    "scopeIn": "mc.data,mc.data", "ddmEndPointIn": "SE_A,SE_A", "realDatasetsIn": "ds.in,ds.in",
    "prodDBlockToken": "NULL,local",
    "outFiles": "out.root,job.log.tgz", "logFile": "job.log.tgz", "logGUID": "g-log",
    "scopeOut": "mc.out", "scopeLog": "mc.log", "ddmEndPointOut": "SE_B,SE_B",
    "realDatasets": "ds.out,ds.log", "destinationDblock": "ds.out_sub,ds.log_sub",
    "maxCpuCount": "3600", "coreCount": "8", "eventService": "False", "loopingCheck": "False",
    "allowNoOutput": "out.root",
}


def test_legacy_strings_parse_into_typed_job():
    job = parse_job(BASE)
    assert (job.panda_id, job.attempt_nr, job.core_count, job.max_cpu_count) == (4242, 2, 8, 3600)
    assert [f.lfn for f in job.inputs] == ["a.root", "b.root"]
    assert job.inputs[0].checksum == Checksum("adler32", "0000000a")
    assert job.inputs[1].checksum.algorithm == "md5"
    assert job.inputs[1].dispatch_token == "local" and job.inputs[0].dispatch_token == ""
    assert job.inputs[1].fsize == 20 and job.inputs[0].scope == "mc.data"
    assert [f.lfn for f in job.outputs] == ["out.root"] and job.outputs[0].scope == "mc.out"
    assert job.log.lfn == "job.log.tgz" and job.log.scope == "mc.log" and job.log.guid == "g-log"
    assert job.outputs[0].dataset == "ds.out" and job.log.dataset == "ds.log"
    assert job.looping_check is False and job.event_service is False
    assert job.allow_no_output == ["out.root"]
    assert job.job_pars == "--in a"


def test_new_api_numbers_are_accepted():
    job = parse_job({**BASE, "PandaID": 4242, "attemptNr": 2, "coreCount": 8, "maxCpuCount": 3600.0})
    assert (job.panda_id, job.attempt_nr, job.core_count, job.max_cpu_count) == (4242, 2, 8, 3600)


def test_job_pars_are_passed_unchanged():
    pars = "ZWNobyBoZWxsbw=="  # base64 sent without a marker stays as it is
    assert parse_job({**BASE, "jobPars": pars}).job_pars == pars


@pytest.mark.parametrize("change, words", [
    ({"fsize": "10"}, "fsize has 1 entries for 2 files"),
    ({"GUID": "a,b,c"}, "GUID has 3"),
    ({"fsize": "10,twenty"}, "not a number"),
    ({"checksum": "sha1:abc,ad:1"}, "unknown checksum type"),
    ({"checksum": "ad:xyz,ad:1"}, "malformed adler32"),
    ({"inFiles": "../etc/passwd,b.root"}, "unsafe file name"),
    ({"inFiles": "dir/a.root,b.root"}, "unsafe file name"),
    ({"outFiles": "..,job.log.tgz"}, "unsafe file name"),
    ({"maxCpuCount": "lots"}, "maxCpuCount"),
    ({"transformation": ""}, "no transformation"),
])
def test_broken_definitions_fail_with_identity(change, words):
    with pytest.raises(JobDefinitionError) as err:
        parse_job({**BASE, **change})
    assert words in err.value.diag
    assert err.value.code == ErrorCode.BAD_JOB_DEFINITION
    assert (err.value.panda_id, err.value.attempt_nr) == (4242, 2)


@pytest.mark.parametrize("raw", [{}, {"PandaID": "NULL"}, {"PandaID": "abc"}, {"PandaID": -1}, [], "job"])
def test_no_panda_id_is_a_broken_definition_without_identity(raw):
    with pytest.raises(JobDefinitionError) as err:
        parse_job(raw)
    assert err.value.panda_id is None


def test_checksum_forms():
    assert parse_checksum("ad:1") == Checksum("adler32", "00000001")
    assert parse_checksum("0a1b2c3d") == Checksum("adler32", "0a1b2c3d")
    assert str(parse_checksum("MD5:" + "A" * 32)) == "md5:" + "a" * 32
    assert parse_checksum("NULL") is None


def test_marked_base64_job_pars_are_decoded():
    pars = "--outputs 'a b' --x=\"$HOME\""
    encoded = base64.b64encode(pars.encode()).decode()
    assert parse_job({**BASE, "jobPars": f"base64:{encoded}"}).job_pars == pars
    assert parse_job({**BASE, "jobPars": encoded, "jobParsEncoding": "base64"}).job_pars == pars
    assert parse_job({**BASE, "jobPars": encoded}).job_pars == encoded  # unmarked: unchanged


def test_marked_base64_job_pars_that_do_not_decode_break_the_definition():
    with pytest.raises(JobDefinitionError, match="jobPars is marked base64"):
        parse_job({**BASE, "jobPars": "base64:%%%not base64"})
