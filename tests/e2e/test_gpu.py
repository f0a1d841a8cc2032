"""GPU inventory and GPU usage through the whole pilot. No GPU here: ``nvidia-smi`` is played by a
script that answers the exact queries the pilot makes, in nvidia-smi's CSV format."""

from __future__ import annotations

import os
import subprocess

import httpx

from tests.e2e.conftest import NODEPILOT, add_jobs, final_update
from tests.e2e.test_hostile_payloads import queuedata

MARKER = "np-gpu-payload"
FAKE_SMI = f"""#!/bin/bash
case "$1" in
  --query-gpu=name,memory.total,driver_version)
    echo "NVIDIA A100-SXM4-40GB, 40960, 550.54.15"; echo "NVIDIA A100-SXM4-40GB, 40960, 550.54.15";;
  --query-compute-apps=pid,used_memory,gpu_uuid)
    for pid in $(pgrep -f "^{MARKER}"); do echo "$pid, 1024, GPU-0f1e2d3c"; done;;
  --query-gpu=uuid,utilization.gpu)
    echo "GPU-0f1e2d3c, 87"; echo "GPU-99999999, [N/A]";;
  *) exit 6;;
esac
"""


def test_gpus_are_reported_and_their_use_measured(site, job_server, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    add_jobs(site, {"PandaID": 7500, "attemptNr": 1, "transformation": "bash",
                    "jobPars": f"-c 'exec -a {MARKER} sleep 2'", "outFiles": "l7500.tgz", "logFile": "l7500.tgz",
                    "scopeLog": "demo.log"})
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [*NODEPILOT, "start", "--queue", "LOCAL_TEST", "--server", job_server.url, "--workdir", str(site / "work"),
         "--se-dir", str(site / "se"), "--queuedata", queuedata(site)],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    update = final_update(job_server.jobs()[7500])
    assert update["job_status"] == "finished", update.get("pilot_error_diag")
    metrics = dict(pair.split("=", 1) for pair in update["job_metrics"].split())
    assert metrics["maxGPUMemKB"] == str(1024 * 1024) and metrics["avgGPUUtil"].isdigit(), metrics
    assert 0 < int(metrics["avgGPUUtil"]) <= 87
    reports = httpx.get(f"{job_server.url}/workers", timeout=10).json()
    gpus = [r for r in reports if r["method"] == "update_worker_node_gpu"]
    assert len(gpus) == 1, reports
    assert (gpus[0]["vendor"], gpus[0]["model"], int(gpus[0]["count"]), int(gpus[0]["vram"])) == \
        ("NVIDIA", "NVIDIA A100-SXM4-40GB", 2, 40960)
    assert gpus[0]["driver_version"] == "550.54.15" and gpus[0]["host_name"]
