"""Progress lines of ``nodepilot run`` on a terminal (a real pseudo-terminal), and the JSON log format."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from nodepilot.logs import JsonFormatter, job_context, set_step
from tests.operators.helpers import NODEPILOT, job, queuedata

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_until_exit(proc: subprocess.Popen, fd: int, timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_progress_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "se").mkdir()
    spec = job(4301, "bash", "-c 'sleep 1.5; echo x > out.txt'")
    (tmp_path / "job.json").write_text(json.dumps(spec))
    main, child = pty.openpty()
    proc = subprocess.Popen([*NODEPILOT, "run", str(tmp_path / "job.json"), "--workdir", str(tmp_path / "work"),
                             "--queuedata", str(queuedata(tmp_path, tmp_path / "se"))],
                            stdin=subprocess.DEVNULL, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "160"})
    os.close(child)
    try:
        text = read_until_exit(proc, main, timeout=60)
        assert proc.wait(10) == 0, text[-3000:]
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    assert "job 4301 payload" in text
    assert "job 4301 finished" in text
    assert " INFO " not in text  # on a terminal the progress lines replace the INFO log lines


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("services.x", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_log_lines() -> None:
    fmt = JsonFormatter("monitor")
    plain = json.loads(fmt.format(record("hello %s", "world")))
    assert plain["message"] == "hello world" and plain["service"] == "monitor" and plain["level"] == "INFO"
    assert "PandaID" not in plain and "step" not in plain
    assert json.loads(fmt.format(record("job %s: payload started", 77)))["PandaID"] == 77  # the project's style
    with job_context(88, "stagein"):
        line = json.loads(fmt.format(record("copying")))
        assert (line["PandaID"], line["step"]) == (88, "stagein")
        set_step("payload")
        assert json.loads(fmt.format(record("x")))["step"] == "payload"
    assert "PandaID" not in json.loads(fmt.format(record("after")))
    assert json.loads(fmt.format(record("x", job_id=5, step="stageout")))["step"] == "stageout"
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(fmt.format(rec))["exception"]


def test_unknown_log_format_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([*NODEPILOT, "run", str(tmp_path / "none.json"), "--log-format", "xml"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2


def test_status_frame_shows_transfers_ranges_and_firings() -> None:
    from rich.console import Console

    from nodepilot.status import render

    snapshot = {
        "monitor": {"uptime_s": 3, "updates_delivered": 4, "current_job": 9, "current_state": "running",
                    "current_step": "stagein", "jobs": [{"panda_id": 8, "state": "failed", "pilot_error_code": 1150,
                                                         "timings": {"payload": 2.5}}],
                    "checks": {"looping": {"ok": False, "value": 1900, "diag": "no file written for 1900 s"}}},
        "runner": None,
        "stager": {"transfers": [{"job_id": 9, "lfn": "big.root", "direction": "in", "bytes_done": 50_000_000,
                                  "size": 200_000_000, "rate_bytes_s": 25_000_000.0}]},
        "eventclient": {"jobs": {"9": {"counts": {"ready": 4, "running": 2, "failed": 0}, "ranges_per_s": 1.5}}},
    }
    console = Console(width=160, record=True, color_system=None)
    console.print(render(snapshot, Path("/run/x")))
    text = console.export_text()
    assert "not reachable: runner" in text
    assert "big.root" in text and "50.0 MB" in text and "200.0 MB" in text and "25.0 MB/s" in text
    assert "ready 4, running 2" in text
    assert "FIRED" in text and "no file written for 1900 s" in text
    assert "1150" in text and "stagein" in text


def test_status_frame_shows_every_running_job_of_a_multi_slot_pilot() -> None:
    from rich.console import Console

    from nodepilot.status import render

    checks = {"memory": {"ok": True, "value": 1234}}
    snapshot = {
        "monitor": {"uptime_s": 3, "current_job": 21, "current_state": "running", "current_step": "payload",
                    "running": [{"panda_id": 21, "state": "running", "step": "payload", "checks": checks},
                                {"panda_id": 22, "state": "starting", "step": "stagein", "checks": {}}],
                    "jobs": []},
        "runner": None, "stager": None, "eventclient": None,
    }
    console = Console(width=160, record=True, color_system=None)
    console.print(render(snapshot, Path("/run/x")))
    text = console.export_text()
    assert "21" in text and "22" in text and "stagein" in text and "payload" in text
    assert "memory" in text and "1234" in text


def test_progress_follows_every_running_job(tmp_path: Path) -> None:
    from rich.console import Console

    from nodepilot.progress import JobProgress

    console = Console(width=120, record=True, color_system=None, force_terminal=False)
    progress = JobProgress(tmp_path, console=console)
    running = [{"panda_id": 31, "step": "payload"}, {"panda_id": 32, "step": "stagein"}]
    transfer = {"job_id": 32, "direction": "in", "size": 2_000_000, "bytes_done": 500_000, "rate_bytes_s": 1e6}
    progress.update({"monitor": {"running": running, "jobs": []}, "stager": {"transfers": [transfer]}})
    progress.update({"monitor": {"running": [], "jobs": [{"panda_id": 31, "state": "finished"},
                                                          {"panda_id": 32, "state": "failed",
                                                           "pilot_error_code": 1099}]}})
    console.print(progress.progress)
    text = console.export_text()
    assert "job 31" in text and "job 32" in text and "finished" in text and "pilot error 1099" in text
    assert any(key[0] == 32 for key in progress.tasks) and any(key[0] == 31 for key in progress.tasks)
