"""GPUs of the worker node and their use by a payload, read with ``nvidia-smi`` where it exists.

``nvidia-smi`` ships with every NVIDIA driver, so no Python binding is needed; each call is
bounded in time, and a node without it (or with a broken driver) simply has no GPU.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

SMI_TIMEOUT_S = 10.0


def _smi(*query: str) -> list[list[str]]:
    """Rows of an ``nvidia-smi --query-...`` in CSV without header and units; [] without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return []
    return [[cell.strip() for cell in row] for row in csv.reader(out.splitlines()) if row]


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def gpu_inventory() -> list[dict[str, Any]]:
    """One ``update_worker_node_gpu`` record per GPU model: vendor, model, count, vram (MB), driver."""
    models: dict[tuple[str, int | None, str], int] = {}
    for row in _smi("--query-gpu=name,memory.total,driver_version"):
        if len(row) >= 3:
            key = (row[0], _int(row[1]), row[2])
            models[key] = models.get(key, 0) + 1
    return [{"vendor": "NVIDIA", "model": model, "count": count, "vram": vram, "framework": "CUDA",
             "driver_version": driver} for (model, vram, driver), count in models.items()]


def gpu_usage(pids: Iterable[int]) -> dict[str, int]:
    """GPU memory (kB) the given processes hold and the utilisation (%) of the GPUs they use."""
    wanted = set(pids)
    if not wanted or shutil.which("nvidia-smi") is None:
        return {}
    mem_mb, used_gpus = 0, set()
    for row in _smi("--query-compute-apps=pid,used_memory,gpu_uuid"):
        if len(row) >= 3 and _int(row[0]) in wanted:
            mem_mb += _int(row[1]) or 0
            used_gpus.add(row[2])
    if not used_gpus:
        return {}
    utils = [_int(row[1]) or 0 for row in _smi("--query-gpu=uuid,utilization.gpu") if len(row) >= 2
             and row[0] in used_gpus]
    return {"gpu_mem_kb": mem_mb * 1024, "gpu_util_pct": round(sum(utils) / len(utils)) if utils else 0}
