"""The queue's copysetup: sourced once by real bash, its variables given to the movers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from nodepilot.http import uds_client
from services.stager.copysetup import Copysetup, CopysetupError, sourced_env
from tests.conftest import running_service
from tests.stager.test_stager_service import answer, in_file, put_on_se, send, workdir


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "copysetup.sh"
    path.write_text(text)
    return path


def test_a_sourced_script_gives_its_variables_and_nothing_else(tmp_path):
    path = script(tmp_path, "echo setting up\nexport XRD_REQUESTTIMEOUT=33\nexport X509_USER_PROXY=/tmp/proxy\n"
                            "export NP_TEST_SPACES='a b;c'\nLOCAL_ONLY=1\ncd /\n")
    env = asyncio.run(sourced_env(str(path), 10))
    assert env == {"XRD_REQUESTTIMEOUT": "33", "X509_USER_PROXY": "/tmp/proxy", "NP_TEST_SPACES": "a b;c"}


def test_shell_text_is_run_as_is():
    env = asyncio.run(sourced_env("export NP_A=1; export NP_B=$NP_A-2", 10))
    assert env == {"NP_A": "1", "NP_B": "1-2"}


@pytest.mark.parametrize(("setup", "words"), [
    ("/nonexistent/setup.sh", "copysetup script /nonexistent/setup.sh not found"),
    ("echo cvmfs is not mounted >&2; false", "exited with 1: cvmfs is not mounted"),
    ("source /nonexistent/x.sh", "exited with 1"),
])
def test_a_broken_copysetup_says_why(setup, words):
    with pytest.raises(CopysetupError, match=words):
        asyncio.run(sourced_env(setup, 10))


def test_a_hanging_copysetup_is_cut_off(tmp_path):
    started = time.monotonic()
    with pytest.raises(CopysetupError, match="did not finish within 1 s"):
        asyncio.run(sourced_env(f"sleep 30 & echo $! > {tmp_path}/pid; wait", 1))
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the set-up's children outlived it"
        time.sleep(0.02)


def test_applied_once_into_the_environment(tmp_path, monkeypatch):
    counter = tmp_path / "runs"
    path = script(tmp_path, f"echo run >> {counter}\nexport NP_COPYSETUP_TEST=yes\n")
    monkeypatch.delenv("NP_COPYSETUP_TEST", raising=False)
    setup = Copysetup(str(path), 10)

    async def twice() -> None:
        await asyncio.gather(setup.ensure(), setup.ensure())
        await setup.ensure()

    try:
        asyncio.run(twice())
        assert os.environ["NP_COPYSETUP_TEST"] == "yes"
        assert counter.read_text() == "run\n"
        assert setup.view() == {"state": "applied", "variables": ["NP_COPYSETUP_TEST"], "error": ""}
    finally:
        os.environ.pop("NP_COPYSETUP_TEST", None)


def test_through_the_stager_a_good_setup_is_applied_and_a_broken_one_fails_with_1110(rds, pilot_config, tmp_path):
    put_on_se(pilot_config, "demo.data", "in.dat", b"input")
    pilot_config.queuedata.copysetup = str(script(tmp_path, "export XRD_CONNECTIONWINDOW=7\n"))
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 51, "51:1:stagein", files=[in_file("in.dat", b"input")])
        good = answer(rds, 51, "stagein")
        with uds_client(pilot_config.socket_path("stager")) as client:
            status = client.get("/status").json()
    assert good["ok"] is True
    assert status["copysetup"] == {"state": "applied", "variables": ["XRD_CONNECTIONWINDOW"], "error": ""}

    pilot_config.queuedata.copysetup = str(script(tmp_path, "echo no proxy found >&2\nreturn 2\n"))
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 52, "52:1:stagein", files=[in_file("in.dat", b"input")])
        broken = answer(rds, 52, "stagein")
        (workdir(pilot_config, 53) / "out.dat").write_bytes(b"out")
        send(rds, pilot_config, "stageout", 53, "53:1:stageout", files=[{"lfn": "out.dat", "scope": "demo.output"}])
        broken_out = answer(rds, 53, "stageout")
    for event in (broken, broken_out):
        assert event["ok"] is False and event["error_code"] == 1110
        assert "copysetup of queue LOCAL_TEST is broken" in event["diag"] and "no proxy found" in event["diag"]
    assert list(workdir(pilot_config, 52).iterdir()) == []
