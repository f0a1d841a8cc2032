"""The front-end's Redis password never shows: not on a worker's command line (``ps`` shows those to every
user of the node), not in the front-end's log; the workers get it in their environment."""

from __future__ import annotations

import os
import subprocess
from urllib.parse import unquote, urlsplit

import psutil

from tests.conftest import stop_process
from tests.e2e.conftest import NODEPILOT, add_jobs
from tests.hpc.helpers import sleep_job
from tests.waiting import wait_until


def test_workers_get_the_redis_password_in_their_environment_only(site, job_server, redis_url):
    password = unquote(urlsplit(redis_url).password or "")
    assert len(password) > 8
    add_jobs(site, sleep_job(7201, 2))
    log = site / "frontend.log"
    seen: list[str] = []
    with log.open("w") as out:
        frontend = subprocess.Popen([*NODEPILOT, "frontend", "--server", job_server.url, "--workdir",
                                     str(site / "work"), "--se-dir", str(site / "se"), "--launch", "local"],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "NODEPILOT_REDIS_URL": redis_url})
    try:
        def worker_running() -> bool:
            workers = [p for p in psutil.Process(frontend.pid).children(recursive=True)
                       if "--worker-id" in (p.cmdline() or [])]
            seen.extend(" ".join(p.cmdline()) for p in workers)
            return bool(workers)

        wait_until(worker_running, 30, "a worker started by the front-end")
        wait_until(lambda: job_server.jobs().get(7201, {}).get("status") in ("finished", "failed"), 60, "job 7201")
        frontend.wait(60)
    finally:
        stop_process(frontend)
    assert frontend.returncode == 0, log.read_text()[-3000:]
    assert job_server.jobs()[7201]["status"] == "finished"  # the worker reached the front-end's Redis
    assert seen and not any(password in cmdline for cmdline in seen), seen
    text = log.read_text()
    assert "starting worker" in text and password not in text
