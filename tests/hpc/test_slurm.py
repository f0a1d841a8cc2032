"""Slurm: node lists, cores per node, the workers of an allocation and their srun commands."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nodepilot.config import PilotConfig
from nodepilot.frontend import FrontendSettings, plan_workers
from nodepilot.redis_server import redis_binary
from nodepilot.slurm import Allocation, NodeListError, cpus_per_node, expand_nodelist, hostnames, srun_command
from tests.conftest import stop_process
from tests.e2e.conftest import EXAMPLES, NODEPILOT, add_jobs, final_update
from tests.waiting import wait_until


@pytest.mark.parametrize(("text", "hosts"), [
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("login1", ["login1"]),
    ("a[8-10],b1", ["a8", "a9", "a10", "b1"]),
    ("nid[0009-0011]", ["nid0009", "nid0010", "nid0011"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu-a[1,3],cpu[05-06]", ["gpu-a1", "gpu-a3", "cpu05", "cpu06"]),
])
def test_node_lists(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node01-03]", "node[3-1]", "node[a-b]", "n[1-2]]"])
def test_malformed_node_lists(bad):
    with pytest.raises(NodeListError):
        expand_nodelist(bad)


def test_hostnames_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert hostnames("n[1-2]") == ["n1", "n2"]


def test_cpus_per_node():
    assert cpus_per_node("72(x2),36", 3) == [72, 72, 36]
    with pytest.raises(NodeListError):
        cpus_per_node("72(x2)", 3)


def test_allocation_and_its_workers():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "cn[01-02]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
           "PATH": "/nonexistent"}
    alloc = Allocation.from_env(env)
    assert alloc is not None and alloc.nodes == ["cn01", "cn02"] and alloc.cpus == [8, 8]
    assert alloc.workers() == [("cn01", 1, 8), ("cn02", 1, 8)]
    assert alloc.workers(4) == [("cn01", 1, 4), ("cn01", 2, 4), ("cn02", 1, 4), ("cn02", 2, 4)]
    assert Allocation.from_env({"PATH": "/nonexistent"}) is None


def test_srun_commands():
    assert srun_command("cn01", ["nodepilot", "start"]) == [
        "srun", "--nodes=1", "--ntasks=1", "-w", "cn01", "--job-name=nodepilot-cn01", "nodepilot", "start"]
    part = srun_command("cn01", ["x"], cores=4, per_node=False)
    assert "--cpus-per-task=4" in part and "--exact" in part and part[-1] == "x"


def test_front_end_plans_one_worker_per_node(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "cn[01-02]")
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "8(x2)")
    config = PilotConfig(queue="HPC_Q", server="https://panda:25443", redis_url="redis://:pw@fe:6379/0",
                         work_dir=str(tmp_path), se_dir="/se", queuedata_file="/etc/q.json")
    workers = plan_workers(config, FrontendSettings(launch="slurm"))
    assert [w.worker_id for w in workers] == ["cn01-1", "cn02-1"]
    command = workers[1].command
    assert command[:6] == ["srun", "--nodes=1", "--ntasks=1", "-w", "cn02", "--job-name=nodepilot-cn02"]
    tail = command[command.index("nodepilot"):]
    assert tail[:5] == ["nodepilot", "start", "--in-process", "--api", "relay"]
    assert "--redis-url" not in tail and not any("pw" in arg for arg in command)  # ps shows argv to everyone
    assert workers[1].env == {"NODEPILOT_REDIS_URL": "redis://:pw@fe:6379/0"}  # srun passes it on
    assert tail[tail.index("--slots") + 1] == "auto" and tail[tail.index("--queuedata") + 1] == "/etc/q.json"
    assert tail[tail.index("--workdir") + 1] == str(tmp_path / "cn02-1")
    per_cores = plan_workers(config, FrontendSettings(launch="slurm", cores_per_worker=4))
    assert len(per_cores) == 4 and per_cores[0].command[per_cores[0].command.index("--slots") + 1] == "4"


def test_front_end_refuses_what_compute_nodes_cannot_reach(monkeypatch, tmp_path):
    config = PilotConfig(server="https://panda:25443", redis_url="unix:///tmp/r.sock?db=0", work_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unix socket"):
        plan_workers(config, FrontendSettings(launch="slurm"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    config.redis_url = "redis://fe:6379/0"
    with pytest.raises(ValueError, match="outside a Slurm allocation"):
        plan_workers(config, FrontendSettings(launch="slurm"))


def slurm_answers() -> bool:
    if not (shutil.which("salloc") and shutil.which("sinfo")):
        return False
    try:
        return "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False


@contextlib.contextmanager
def tcp_redis(directory: Path) -> Iterator[str]:
    """A Redis the allocation's nodes could reach: TCP (loopback here: the one node is this host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_urlsafe(16)
    conf = directory / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nrequirepass {password}\nsave \"\"\nappendonly no\n"
                    f"dir {directory}\n")
    proc = subprocess.Popen([redis_binary(), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 10, "TCP Redis")
        yield url
    finally:
        stop_process(proc)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not slurm_answers(), reason="no Slurm controller here (tests/hpc/slurm-single-node.sh starts one)")
def test_workers_started_with_srun_inside_an_allocation(site, job_server):
    add_jobs(site, *sorted((EXAMPLES / "jobs").glob("0[12]*.json")))
    with tcp_redis(site) as url:
        result = subprocess.run(
            ["salloc", "--nodes=1", "--time=2", "--job-name=nodepilot-test", *NODEPILOT, "frontend",
             "--server", job_server.url, "--redis-url", url, "--launch", "slurm", "--workdir", str(site / "work"),
             "--se-dir", str(site / "se")], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "srun --nodes=1 --ntasks=1 -w" in result.stderr
    jobs = job_server.jobs()
    assert final_update(jobs[1001])["job_status"] == "finished"
    assert final_update(jobs[1002])["job_status"] == "finished"
    assert final_update(jobs[1001])["batch_id"]  # the worker knew its Slurm job
