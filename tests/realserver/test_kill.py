"""The server's kill command: an operator kills a running job with the server's own client; the
pilot gets ``tobekilled`` with its next heartbeat, kills the payload and fails the job (1144)."""

from __future__ import annotations

import time

from tests.realserver import jobs, pilot
from tests.realserver.harness import wait_for

KILLED_BY_SERVER = 1144  # nodepilot/errors.py
HEARTBEAT_S = 3


def test_kill_command_stops_the_payload(server, site, record):
    payload = "-c 'echo started > started.txt; sleep 120; echo survived > survived.txt'"
    (panda_id,) = server.submit(jobs.job("np.kill", "bash", payload))
    started = time.monotonic()
    proc = pilot.start(site, server.http.url, "--max-jobs", "1", "--heartbeat", str(HEARTBEAT_S))
    commanded = None
    try:
        wait_for("job running on the server (or the pilot gone)",
                 lambda: server.job(panda_id).get("jobstatus") == "running" or proc.poll() is not None, 60)
        if proc.poll() is None:
            server.kill(panda_id)
            commanded = server.job(panda_id).get("commandtopilot")
    finally:
        run = pilot.finish(proc, site, started, timeout=90)
    job_dir = site.work / f"PanDA_Pilot-{panda_id}"
    server.adder_pass()
    job = server.job(panda_id)
    record(f"{job.get('table')} {job.get('jobstatus')} pilot {job.get('piloterrorcode')} "
           f"(command {commanded})", run)

    assert commanded == "tobekilled", commanded
    assert run.exit_code == 0, run.output[-3000:]
    assert run.wall_s < 60, f"the payload was not killed at the next heartbeat: {run.wall_s:.0f} s"
    assert (job_dir / "started.txt").exists(), f"the payload never ran ({job_dir})"
    assert not (job_dir / "survived.txt").exists(), f"the payload survived the kill ({job_dir})"
    assert (job["table"], job["jobstatus"]) == ("jobsarchived4", "cancelled"), job
    assert int(job["piloterrorcode"]) == KILLED_BY_SERVER, job
