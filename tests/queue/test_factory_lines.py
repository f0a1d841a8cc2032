"""The factory command lines of README.md, as written there (servers and paths swapped for local ones),
run a job against ``nodepilot serve`` and do what the README's table says."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.conftest import NODEPILOT, add_jobs, final_update
from tests.queue.cric import ddm_endpoint, file_protocol, queue_record, write
from tests.queue.helpers import QUEUE, acquire_params, short_job

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_lines() -> list[list[str]]:
    block = README.read_text().split("Command lines as factories pass them")[1].split("```")[1]
    text = block.replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("nodepilot start")]


def localised(args: list[str], site: Path, server_url: str) -> list[str]:
    """The README's line with the local server, queue files and work dir."""
    server = urlsplit(server_url)
    se = file_protocol(site / "se")
    queue = write(site / f"{QUEUE}.all.json", queue_record(
        QUEUE, {"read_lan": ["SITE_SE"], "write_lan": ["SITE_SE"]}, {"default": ["mv"]}, timefloor=5))
    ddms = write(site / "ddm.json", {"SITE_SE": ddm_endpoint(5, "SITE_SE", {"read_lan": [se], "write_lan": [se]})})
    values = {"-q": QUEUE, "-r": QUEUE, "-p": str(server.port),
              "--queuedata-url": str(Path(queue).parent / "{pandaqueue}.all.json"), "--storagedata-url": ddms}
    out = []
    for i, arg in enumerate(args):
        before = args[i - 1] if i else ""
        if before == "--url":
            arg = server_url if re.search(r":\d+$", arg) else f"{server.scheme}://{server.hostname}"
        out.append(values.get(before, arg))
    return [*out[2:], "-a", str(site / "work")]


def run_line(site: Path, server_url: str, line: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NODEPILOT, "start", *localised(line, site, server_url)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_the_readme_has_the_two_lines():
    lines = readme_lines()
    assert len(lines) == 2 and all(line[:2] == ["nodepilot", "start"] for line in lines)


def test_grid_factory_line(site, job_server):
    add_jobs(site, short_job(8301), short_job(8302))
    result = run_line(site, job_server.url, readme_lines()[0])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference-pilot options accepted and ignored: -i PR -t -L 3600" in result.stderr
    jobs = job_server.jobs()
    assert all(final_update(jobs[i])["job_status"] == "finished" for i in (8301, 8302))
    params = acquire_params(site)
    assert params[0]["site_name"] == params[0]["computing_element"] == QUEUE
    assert params[0]["resource_type"] == "SCORE" and params[0]["job_type"] == "managed"
    assert "task_id" not in params[1]  # --allow-same-user False
    assert final_update(jobs[8301])["site_name"] == QUEUE
    assert " DEBUG " in result.stderr  # -d


def test_harvester_line(site, job_server):
    add_jobs(site, short_job(8311))
    result = run_line(site, job_server.url, readme_lines()[1], HARVESTER_ID="harvester-1", HARVESTER_WORKER_ID="77")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "-r CRIC_TEST" in result.stderr and "--harvester-submit-mode PULL" in result.stderr
    params = acquire_params(site)[0]
    assert params["resource_type"] == "MCORE" and params["harvester_id"] == "harvester-1" and params["worker_id"] == 77
    assert final_update(job_server.jobs()[8311])["job_status"] == "finished"
    reports = httpx.get(f"{job_server.url}/workers", timeout=10).json()
    node = [r for r in reports if r["method"] == "update_worker_node"]
    assert node and node[0]["site"] == "MY_SITE" and node[0]["panda_queue"] == QUEUE  # -s reaches the inventory
    assert any(r["method"] == "update_worker_status" for r in reports)


def test_no_worker_status_with_k(site, job_server):
    add_jobs(site, short_job(8321))
    result = run_line(site, job_server.url, [*readme_lines()[1], "-k"], HARVESTER_ID="h", HARVESTER_WORKER_ID="78")
    assert result.returncode == 0, result.stderr[-3000:]
    reports = httpx.get(f"{job_server.url}/workers", timeout=10).json()
    assert reports and not any(r["method"] == "update_worker_status" for r in reports)
