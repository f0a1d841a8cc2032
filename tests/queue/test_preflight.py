"""Bad input found before any job is taken: one line naming the file, the field and what was expected,
exit code 2, and the server never asked for a job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodepilot.refargs import check_resource_type, reference_url, split_ignored
from tests.e2e.conftest import add_jobs
from tests.queue.cric import ddm_endpoint, file_protocol, queue_record, write
from tests.queue.helpers import QUEUE, error_lines, publish, short_job, start
from tests.stager.servers import free_ports


def good(site: Path, **over) -> tuple[dict, dict]:
    se = file_protocol(site / "se")
    ddms = {"SITE_SE": ddm_endpoint(11, "SITE_SE", {"read_lan": [se], "write_lan": [se]})}
    record = queue_record(QUEUE, {"read_lan": ["SITE_SE"], "write_lan": ["SITE_SE"]}, {"default": ["mv"]})
    record.update(over)
    return record, ddms


def cric(site: Path, **over) -> list[str]:
    queue, storage = publish(site, *good(site, **over))
    return ["--queuedata-url", queue, "--storagedata-url", storage]


def own(site: Path, doc: object) -> list[str]:
    return ["--queuedata", write(site / "own.json", doc)]


CASES = {
    "own value of the wrong type": (lambda s: own(s, {"maxwdir_mb": "abc"}),
                                    "own.json: maxwdir_mb: input should be a valid integer"),
    "own typo": (lambda s: [*own(s, {"watchdg": {"period_s": 1}}), "--se-dir", str(s / "se")],
                 "own.json: watchdg: unknown setting"),
    "own nested typo": (lambda s: own(s, {"stager": {"atempts": 3}}), "own.json: stager.atempts: unknown setting"),
    "own file missing": (lambda s: ["--queuedata", str(s / "nowhere.json")],
                         "nowhere.json: cannot read it: No such file"),
    "own not JSON": (lambda s: ["--queuedata", str(_text(s / "own.json", "{maxwdir_mb: 1"))], "own.json: not JSON"),
    "CRIC value of the wrong type": (lambda s: cric(s, maxwdir="abc"),
                                     "CRIC_TEST.all.json: maxwdir: input should be a valid integer"),
    "CRIC unknown copytool": (lambda s: cric(s, acopytools={"pl": ["lsm"]}),
                              "acopytools.pl: copytool 'lsm' has no nodepilot mover"),
    "CRIC endpoint not in DDM": (lambda s: cric(s, astorages={"pl": ["NOWHERE"]}),
                                 "astorages.pl: endpoint 'NOWHERE' is not among the DDM endpoints"),
    "CRIC without DDM endpoints": (lambda s: ["--queuedata-url", publish(s, *good(s))[0]],
                                   "no DDM endpoints could be read"),
    "no storage at all": (lambda s: [], "no storage defined"),
    "no endpoint for the log": (lambda s: own(s, {"endpoints": {"read_lan": [{"name": "A", "url": "file:///a"}]}}),
                                "no storage endpoint for write_lan"),
    "queue source down": (lambda s: ["--queuedata-url", f"http://127.0.0.1:{free_ports(1)[0]}/q.json"],
                          "queue CRIC_TEST: no queue definition could be read"),
    "work dir not writable": (lambda s: [*cric(s), "-a", str(_text(s / "a-file", "x") / "work")],
                              "not writable"),
    "work dir too small": (lambda s: cric(s, maxwdir=10**12), "the queue's maxwdir asks for 1000000000000 MB"),
    "bad resource type": (lambda s: [*cric(s), "--resource-type", "BIG"], "--resource-type 'BIG': expected SCORE"),
    "bad flag value": (lambda s: [*cric(s), "--allow-same-user", "perhaps"], "--allow-same-user 'perhaps'"),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_no_job_taken(site, job_server, case):
    make_args, message = CASES[case]
    add_jobs(site, short_job(8201))
    result = start(site, job_server.url, *make_args(site), timeout=60)
    lines = error_lines(result)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert job_server.jobs() == {}


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "http://127.0.0.1:99999"], "--url 'http://127.0.0.1:99999': the port is not a number"),
    (["--url", "http://127.0.0.1", "-p", "0"], "--port 0: expected a number from 1 to 65535"),
    (["--server", "ftp://127.0.0.1:21"], "server URL 'ftp://127.0.0.1:21': expected http:// or https://"),
])
def test_malformed_server_urls(site, args, message):
    result = start(site, "", *args, "--se-dir", str(site / "se"), timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(error_lines(result)) == 1


def test_url_and_port_give_one_url():
    assert reference_url("https://panda.example.org", None) == "https://panda.example.org:25443"
    assert reference_url("https://panda.example.org:25443", None) == "https://panda.example.org:25443"
    assert reference_url("https://panda.example.org:25443/", 25080) == "https://panda.example.org:25080"
    assert reference_url("panda.example.org", 443) == "https://panda.example.org:443"
    assert reference_url("http://[::1]:80", 8080) == "http://[::1]:8080"
    check_resource_type("MCORE_LOMEM")
    with pytest.raises(ValueError):
        check_resource_type("score")


def test_ignored_reference_options_are_split_off():
    args = ["-q", "Q", "-i", "PR", "-t", "--use-https=False", "-L", "3600", "-z", "--url", "http://x", "-r", "Q"]
    kept, ignored = split_ignored(args)
    assert kept == ["-q", "Q", "--url", "http://x"]
    assert ignored == ["-i PR", "-t", "--use-https=False", "-L 3600", "-z", "-r Q"]


def test_own_settings_file_keeps_working(site, job_server):
    """The documented own format (tests/e2e use it) still runs a job, over the built-in local SE."""
    add_jobs(site, short_job(8202))
    result = start(site, job_server.url, *own(site, {"watchdog": {"period_s": 5}, "maxwdir_mb": 100}),
                   "--se-dir", str(site / "se"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(json.dumps(job_server.jobs()[8202]["status"])) == "finished"


def test_front_end_workers_get_the_queue_sources(tmp_path):
    from nodepilot.config import PilotConfig
    from nodepilot.frontend import worker_command

    config = PilotConfig(queue="Q", work_dir=str(tmp_path), se_dir="", queuedata_url="https://p/{pandaqueue}.json",
                         queuedata_dump="/cvmfs/x/q.json", storagedata_url="/cvmfs/x/ddm.json", resource_type="MCORE")
    command = worker_command(config, "w1", "1", [])
    for option, value in (("--queuedata-url", "https://p/{pandaqueue}.json"), ("--queuedata-dump", "/cvmfs/x/q.json"),
                          ("--storagedata-url", "/cvmfs/x/ddm.json"), ("--resource-type", "MCORE")):
        assert command[command.index(option) + 1] == value
