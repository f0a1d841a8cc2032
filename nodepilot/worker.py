"""Facts about the worker node the pilot reports to the server."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import psutil

from nodepilot import __version__
from nodepilot.cpuinfo import cpu_info

_BATCH_IDS = (
    ("SLURM", "SLURM_JOB_ID"),
    ("PBS", "PBS_JOBID"),
    ("LSF", "LSB_JOBID"),
    ("SGE", "JOB_ID"),
    ("CONDOR", "CONDOR_JOBID"),
)


def batch_system() -> tuple[str, str]:
    """(batch system name, batch job id) from the environment the batch system sets."""
    env = os.environ
    ad = env.get("_CONDOR_JOB_AD")
    if ad and Path(ad).is_file():
        for line in Path(ad).read_text(errors="replace").splitlines()[:500]:
            key, _, value = line.partition("=")
            if key.strip() == "GlobalJobId":
                return "CONDOR", value.strip().strip('"')
    for name, var in _BATCH_IDS:
        if env.get(var):
            return name, env[var]
    return "unknown", ""


def pilot_id(tag: str) -> str:
    """``<tag>|<batch system>|<PR|RC>|<version>`` as the server expects."""
    return f"{tag}|{batch_system()[0]}|PR|{__version__}"


def free_disk_mb(path: str | Path) -> int:
    return shutil.disk_usage(path).free // (1 << 20)


def memory_mb() -> int:
    return psutil.virtual_memory().total // (1 << 20)


def cpu_mhz() -> int:
    freq = psutil.cpu_freq()
    return int(freq.current) if freq else 0


def node_inventory(site: str, queue: str, node: str, work_dir: str | Path) -> dict[str, object]:
    """The ``update_worker_node`` fields: CPU model, layout and x86-64 level, memory (MB), local disk (GB)."""
    cpu = cpu_info()
    logical = psutil.cpu_count() or 0
    n_sockets = max(1, len(cpu.sockets))
    physical = len(cpu.cores) or psutil.cpu_count(logical=False) or logical
    return {
        "site": site, "panda_queue": queue, "host_name": node,
        "cpu_model": cpu.model or platform.processor() or "unknown",
        "n_logical_cpus": logical, "n_sockets": n_sockets, "cores_per_socket": max(1, physical // n_sockets),
        "threads_per_core": max(1, logical // max(1, physical)), "cpu_architecture": platform.machine(),
        "cpu_architecture_level": cpu.architecture_level,
        "clock_speed": float(cpu_mhz()) or None, "total_memory": memory_mb(),
        "total_local_disk": shutil.disk_usage(work_dir).total // 10**9,
    }
