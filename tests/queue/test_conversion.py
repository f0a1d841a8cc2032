"""CRIC queue + DDM endpoints -> our queue data; our own settings over it; the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodepilot.config import PilotConfig
from nodepilot.queue.loader import load
from nodepilot.queue.model import Endpoint, QueueData
from nodepilot.queue.schema import QueueConfigError
from services.stager.paths import order_for_job
from tests.queue.cric import ddm_endpoint, file_protocol, queue_record, write

XRD = ("root://se1.example.org:1094/", "/atlas/disk")
DAV = ("https://se2.example.org:443", "/webdav/disk")


def ddms(tmp_path: Path) -> dict:
    return {
        "SITE_XRD": ddm_endpoint(101, "SITE_XRD", {"read_lan": [XRD], "write_lan": [XRD]}),
        "SITE_DAV": ddm_endpoint(102, "SITE_DAV", {"read_lan": [DAV], "write_wan": [XRD, DAV]}),
        "SITE_LOGS": ddm_endpoint(103, "SITE_LOGS", {"write_lan": [file_protocol(tmp_path / "logs")]}),
        "SITE_ES": ddm_endpoint(104, "SITE_ES", {"write_lan": [("s3://os.example.org:443", "/es-bucket")]},
                                type="OS_ES"),
        "ELSEWHERE": ddm_endpoint(105, "ELSEWHERE", {"write_lan": [XRD]}),
    }


def config(tmp_path: Path, record: dict | None = None, own: dict | None = None, **extra) -> PilotConfig:
    cfg = PilotConfig(queue="TEST_Q", work_dir=str(tmp_path), se_dir="", **extra)
    if record is not None:
        cfg.queuedata_url = write(tmp_path / "TEST_Q.all.json", record)
        cfg.storagedata_url = write(tmp_path / "ddm.json", ddms(tmp_path))
    if own is not None:
        cfg.queuedata_file = write(tmp_path / "own.json", own)
    return cfg


def standard(**over) -> dict:
    return queue_record("TEST_Q", {"read_lan": ["SITE_XRD"], "write_lan": ["SITE_DAV"], "pl": ["SITE_LOGS"],
                                   "es_events": ["SITE_ES"]},
                        {"read_lan": ["xrdcp"], "write_lan": ["gfalcopy"], "pl": ["mv"], "es_events": ["objectstore"]},
                        **over)


def test_activities_endpoints_protocols_and_ids(tmp_path):
    queue = load(config(tmp_path, standard(maxwdir=3000, maxtime=7200, timefloor=30, corecount=8,
                                           params={"allow_altstageout": True})))
    assert queue.endpoints_for("read_lan") == [Endpoint("SITE_XRD", "root://se1.example.org:1094//atlas/disk", 101)]
    # write_lan is not among SITE_DAV's protocols: write_wan's first entry a gfal copytool serves (https)
    assert queue.endpoints_for("write_lan") == [Endpoint("SITE_DAV", "https://se2.example.org:443/webdav/disk", 102)]
    assert queue.endpoints_for("pl") == [Endpoint("SITE_LOGS", (tmp_path / "logs").resolve().as_uri(), 103)]
    assert queue.endpoints_for("es_events")[0].id == 104  # the objstoreID of event-range reports
    assert queue.copytools == {"read_lan": ["xrootd"], "write_lan": ["webdav"], "pl": ["posix"], "es_events": ["s3"]}
    assert (queue.maxwdir_mb, queue.maxtime_s, queue.timefloor_min, queue.corecount) == (3000, 7200, 30, 8)
    assert queue.allow_alt_stageout is True and queue.name == "TEST_Q" and queue.site == "TEST_Q_SITE"


def test_the_old_pr_pw_roles_and_python_literal_text(tmp_path):
    record = queue_record("TEST_Q", {"pr": ["SITE_XRD"], "pw": ["SITE_XRD"]}, {"pr": ["xrdcp"], "pw": ["xrdcp"]},
                          maxwdir="NULL", params="{}")
    record.update(acopytools=str(record["acopytools"]), astorages=str(record["astorages"]))  # Python-literal text
    queue = load(config(tmp_path, record))
    for activity in ("read_lan", "write_lan", "pl", "es_events"):
        assert [e.name for e in queue.endpoints_for(activity)] == ["SITE_XRD"], activity
    assert queue.maxwdir_mb == 0


def test_log_falls_back_to_write_lan_and_default_copytools(tmp_path):
    record = queue_record("TEST_Q", {"read_lan": ["SITE_XRD"], "write_lan": ["SITE_XRD"]}, {"default": ["xrdcp"]})
    queue = load(config(tmp_path, record))
    assert [e.name for e in queue.endpoints_for("pl")] == ["SITE_XRD"]
    assert queue.copytools["pl"] == ["xrootd"]


@pytest.mark.parametrize(("change", "message"), [
    ({"acopytools": {"read_lan": ["lsm"]}}, "acopytools.read_lan: copytool 'lsm' has no nodepilot mover"),
    ({"astorages": {"read_lan": ["NOWHERE"]}}, "astorages.read_lan: endpoint 'NOWHERE' is not among the DDM"),
    ({"acopytools": {"read_lan": ["mv"]}}, "endpoint 'SITE_XRD' has no read_lan/read_wan/r protocol"),
    ({"maxwdir": "abc"}, "maxwdir: input should be a valid integer"),
    ({"acopytools": "{'pr': ['xrdcp'"}, "acopytools: input should be a valid dictionary"),
    ({"nickname": ""}, "nickname: string should have at least 1 character"),
])
def test_bad_cric_input_is_one_line_naming_file_and_field(tmp_path, change, message):
    record = standard()
    for key, value in change.items():
        record[key] = {**record[key], **value} if isinstance(value, dict) else value
    with pytest.raises(QueueConfigError) as info:
        load(config(tmp_path, record))
    text = str(info.value)
    assert message in text and "TEST_Q.all.json" in text and "\n" not in text


def test_own_settings_over_cric_and_typos_refused(tmp_path):
    own = {"watchdog": {"looping_limit_s": 600}, "maxwdir_mb": 500,
           "endpoints": {"log_se": [{"name": "LOGSE", "url": "file:///tmp/logse"}]}}
    queue = load(config(tmp_path, standard(), own))
    assert queue.watchdog == {"looping_limit_s": 600} and queue.maxwdir_mb == 500
    assert queue.endpoints_for("log_se")[0].name == "LOGSE" and queue.endpoints_for("read_lan")[0].id == 101
    with pytest.raises(QueueConfigError, match=r"own.json: watchdog.looping_limt_s: unknown setting"):
        load(config(tmp_path, standard(), {"watchdog": {"looping_limt_s": 600}}))
    with pytest.raises(QueueConfigError, match=r"own.json: maxwdir_mb: input should be a valid integer.*'abc'"):
        load(config(tmp_path, None, {"maxwdir_mb": "abc"}))
    with pytest.raises(QueueConfigError, match=r"copytools.pl: copytool 'lsm' has no nodepilot mover"):
        load(config(tmp_path, None, {"copytools": {"pl": ["lsm"]}}))
    with pytest.raises(QueueConfigError, match=r"endpoints.pl: https://x/y is not served by its copytools"):
        load(config(tmp_path, None, {"copytools": {"pl": ["xrdcp"]},
                                     "endpoints": {"pl": [{"name": "X", "url": "https://x/y"}]}}))


def test_own_format_alone_fallbacks_and_storage_rules(tmp_path):
    own = {"endpoints": {"default": [{"name": "D", "url": "file:///d"}], "pw": [{"name": "W", "url": "file:///w"}]}}
    queue = load(config(tmp_path, None, own))
    assert [e.name for e in queue.endpoints_for("read_lan")] == ["D"]
    assert [e.name for e in queue.endpoints_for("pl")] == ["D"]  # default comes before the old pw role
    assert queue.timefloor_min is None  # our own format: jobs while the slot's time allows
    with pytest.raises(QueueConfigError, match="no storage defined"):
        load(PilotConfig(queue="Q", work_dir=str(tmp_path), se_dir=""))
    local = load(PilotConfig(queue="Q", work_dir=str(tmp_path), se_dir=str(tmp_path / "se")))
    assert local.endpoints_for("pl")[0].name == "LOCAL_SE"


def test_a_flat_cric_record_given_as_queuedata_or_found_in_the_work_dir(tmp_path):
    cfg = config(tmp_path, standard())
    cfg.queuedata_file, cfg.queuedata_url = cfg.queuedata_url, ""
    assert load(cfg).endpoints_for("read_lan")[0].name == "SITE_XRD"
    (tmp_path / "queuedata.json").write_text(json.dumps(standard(maxwdir=1234)))
    (tmp_path / "cric_ddmendpoints.json").write_text(json.dumps(ddms(tmp_path)))
    queue = load(PilotConfig(queue="TEST_Q", work_dir=str(tmp_path), se_dir=""))
    assert queue.maxwdir_mb == 1234 and queue.endpoints_for("pl")[0].id == 103


def test_dump_keyed_by_queue_is_merged_under_the_queue_record(tmp_path):
    dump = {"TEST_Q": standard(maxwdir=999, maxtime=100), "OTHER": standard(nickname="OTHER")}
    cfg = config(tmp_path, {"nickname": "TEST_Q", "maxtime": 5000})
    cfg.queuedata_dump = write(tmp_path / "cric_pandaqueues.json", dump)
    queue = load(cfg)
    assert (queue.maxwdir_mb, queue.maxtime_s) == (999, 5000)  # the queue record wins key by key
    assert queue.endpoints_for("read_lan")[0].name == "SITE_XRD"


def test_the_jobs_output_endpoint_kept_when_listed_else_last_alternative():
    a, b, c = Endpoint("A", "file:///a"), Endpoint("B", "file:///b"), Endpoint("C", "file:///c")
    known = {"C": c}.get
    assert order_for_job([a, b], "B", known) == [b, a]
    assert order_for_job([a, b], "C", known) == [a, b, c]
    assert order_for_job([a, b], "UNKNOWN", known) == [a, b]
    assert order_for_job([a, b], "", known) == [a, b]


def test_queuedata_roundtrip_through_pilot_json(tmp_path):
    queue = load(config(tmp_path, standard(timefloor=5)))
    cfg = PilotConfig(queuedata=queue, run_dir=str(tmp_path / "run"))
    back = PilotConfig.load(cfg.save()).queuedata
    assert back.endpoints_for("es_events")[0].id == 104 and back.timefloor_min == 5
    assert isinstance(back, QueueData)


def test_container_type_catchall_and_isolation_mode(tmp_path, caplog):
    record = standard(container_type="singularity:pilot;docker:wrapper", container_options="-B /cvmfs",
                      catchall="no_token_renewal mv_final_destination")
    with caplog.at_level("INFO"):
        queue = load(config(tmp_path, record))
    assert queue.isolation == {"mode": "apptainer", "options": "-B /cvmfs"}  # container_options go to apptainer
    said = [r.getMessage() for r in caplog.records if "catchall tokens" in r.getMessage()]
    assert len(said) == 1 and "no_token_renewal mv_final_destination" in said[0]
    with pytest.raises(QueueConfigError, match=r"own.json: isolation.mode: input should be 'auto', 'apptainer'"):
        load(config(tmp_path, None, {"isolation": {"mode": "chroot"}}))


def test_our_event_service_and_isolation_settings_are_in_the_schema(tmp_path):
    queue = load(config(tmp_path, None, {"endpoints": {"es_events": [{"name": "OS", "url": "file:///os"}]},
                                         "es": {"objstore_id": 9002}, "isolation": {"options": "-B /scratch"}}))
    assert queue.es["objstore_id"] == 9002 and queue.isolation["options"] == "-B /scratch"
    with pytest.raises(QueueConfigError, match="objstore_id"):
        load(config(tmp_path, None, {"es": {"objstore_id": -1}}))
