"""The fields of job updates (services/monitor/fields.py): heartbeats carry the figures measured so
far, the final update always has metaData, the CPU is described as the server's accounting wants."""

from __future__ import annotations

import json

import pytest

from nodepilot.config import PilotConfig
from nodepilot.cpuinfo import cpu_info
from nodepilot.job import parse_job
from nodepilot.panda.api_v1 import UPDATE_MAP, translate
from nodepilot.panda.legacy import UPDATE_JOB_NAMES, legacy_params
from nodepilot.usage import decode_usage
from services.monitor.fields import job_update, own_report
from services.monitor.jobrun import JobResult
from services.runner.sampler import Sample, UsageSummary

JOB = parse_job({"PandaID": 5, "attemptNr": 2, "transformation": "run.sh", "jobPars": "", "coreCount": 4})
CONFIG = PilotConfig(queue="Q", node="wn01")
SO_FAR = decode_usage({  # the runner's hash, as the monitor reads it
    **Sample(1.0, rss_kb=900, cpu_s=12.6).hash_fields(),
    **{k: json.dumps(v) for k, v in UsageSummary(cpu_seconds=12.6, max_rss_kb=1000, avg_rss_kb=800,
                                                 tot_rbytes=4096).to_dict().items()}})


def result(**kwargs: object) -> JobResult:
    return JobResult(5, state=kwargs.pop("state", "running"), start_time=1.7e9, **kwargs)  # type: ignore[arg-type]


def test_a_heartbeat_carries_the_figures_measured_so_far():
    fields = job_update(JOB, CONFIG, result(), {}, [], final=False, usage=SO_FAR)
    assert (fields["cpuConsumptionTime"], fields["maxRSS"], fields["avgRSS"], fields["totRBYTES"]) == (13, 1000, 800,
                                                                                                        4096)
    assert fields["cpuConsumptionUnit"] == cpu_info().consumption_unit and fields["coreCount"] == 4
    assert "metaData" not in fields and "endTime" not in fields
    before = job_update(JOB, CONFIG, result(state="starting"), {}, [], final=False)
    assert "cpuConsumptionTime" not in before and "maxRSS" not in before


def test_the_payload_figures_win_once_it_ended():
    payload = {"cpu_seconds": 30.2, "max_rss_kb": 2000, "n_events": 7}
    fields = job_update(JOB, CONFIG, result(), payload, [], final=False, usage=SO_FAR)
    assert (fields["cpuConsumptionTime"], fields["maxRSS"], fields["nEvents"]) == (30, 2000, 7)


def test_the_final_update_always_has_meta_data():
    report = '{"exitCode": 0, "exitMsg": "OK"}'
    assert job_update(JOB, CONFIG, result(state="finished"), {"report_text": report}, [],
                      final=True)["metaData"] == report
    ok = json.loads(job_update(JOB, CONFIG, result(state="finished", trans_exit_code=0), {"cpu_seconds": 1}, [],
                               final=True)["metaData"])
    assert ok == {"exitCode": 0, "exitMsg": "OK", "pilot": "nodepilot"}
    failed = result(state="failed", trans_exit_code=3, exe_error_diag="bad input")
    assert json.loads(own_report(failed)) == {"exitCode": 3, "exitMsg": "bad input", "pilot": "nodepilot"}
    never_ran = result(state="failed", pilot_error_code=1099, pilot_error_diag="stage-in failed")
    assert json.loads(job_update(JOB, CONFIG, never_ran, {}, [], final=True)["metaData"]) == {
        "exitCode": 1099, "exitMsg": "stage-in failed", "pilot": "nodepilot"}


@pytest.mark.parametrize("final", [False, True])
def test_both_dialects_send_every_field(final: bool, caplog: pytest.LogCaptureFixture):
    """The v1 names are exactly what pilot/update_job takes; the legacy updateJob takes each name."""
    payload = {"cpu_seconds": 3, "max_rss_kb": 10} if final else {}
    fields = job_update(JOB, CONFIG, result(state="finished" if final else "running"), payload, [],
                        final=final, usage=SO_FAR)
    v1 = translate(fields, UPDATE_MAP, required=("job_id", "job_status"))
    assert [name for name in fields if name not in UPDATE_MAP] == ["timestamp"]  # legacy only
    assert v1.get("cpu_architecture_level") == cpu_info().architecture_level
    assert "cpu_consumption_unit" in v1 and "max_rss" in v1
    legacy = legacy_params(fields, UPDATE_JOB_NAMES, ("jobId", "state"))
    assert set(legacy) == set(fields) and "not sending" not in caplog.text
