"""Inside a Slurm allocation: which nodes and cores it has, and the ``srun`` command that starts one worker
(``nodepilot start --in-process --api relay ...``) on one of them.

Node lists (``node[01-03,07],gpu-a[1-2]``) are expanded by ``scontrol show hostnames`` where it exists, else
by ``expand_nodelist`` (the same grammar: comma-separated names, each with bracketed ranges and numbers,
zero-padding kept, several bracket groups making their product).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

SCONTROL_TIMEOUT_S = 10.0
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class NodeListError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeListError(f"unbalanced ']' in {text!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise NodeListError(f"unbalanced '[' in {text!r}")
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _numbers(spec: str, whole: str) -> list[str]:
    out: list[str] = []
    for item in spec.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise NodeListError(f"bad range {item!r} in {whole!r}")
        first, last = match[1], match[2] or match[1]
        if int(last) < int(first):
            raise NodeListError(f"descending range {item!r} in {whole!r}")
        out += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]  # Slurm pads as the first
    return out


def _expand_one(name: str) -> list[str]:
    start = name.find("[")
    if start < 0:
        if "]" in name:
            raise NodeListError(f"unbalanced ']' in {name!r}")
        return [name]
    end = name.find("]", start)
    if end < 0:
        raise NodeListError(f"unbalanced '[' in {name!r}")
    head, spec, tail = name[:start], name[start + 1:end], name[end + 1:]
    return [f"{head}{n}{rest}" for n in _numbers(spec, name) for rest in _expand_one(tail)]


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-03,07]`` -> node01 node02 node03 node07 (NodeListError when malformed)."""
    hosts: list[str] = []
    for name in _split_top(nodelist):
        hosts += _expand_one(name)
    return hosts


def hostnames(nodelist: str) -> list[str]:
    """The allocation's hosts: ``scontrol show hostnames`` when it works here, else our own parser."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=SCONTROL_TIMEOUT_S, check=True).stdout
            hosts = out.split()
            if hosts:
                return hosts
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("scontrol show hostnames failed (%s): expanding %r ourselves", exc, nodelist)
    return expand_nodelist(nodelist)


def cpus_per_node(text: str, n_nodes: int) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``72(x2),36``) as one count per node."""
    counts: list[int] = []
    for item in _split_top(text):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not match:
            raise NodeListError(f"bad SLURM_JOB_CPUS_PER_NODE item {item!r}")
        counts += [int(match[1])] * int(match[2] or 1)
    if len(counts) != n_nodes:
        raise NodeListError(f"SLURM_JOB_CPUS_PER_NODE {text!r} names {len(counts)} nodes, the node list {n_nodes}")
    return counts


@dataclass(frozen=True)
class Allocation:
    job_id: str
    nodes: list[str]
    cpus: list[int]  # per node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Allocation | None:
        """The allocation this process runs in (None outside one); NodeListError when its variables are bad."""
        env = dict(os.environ if env is None else env)
        job_id, nodelist = env.get("SLURM_JOB_ID"), env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not job_id or not nodelist:
            return None
        nodes = hostnames(nodelist)
        per_node = env.get("SLURM_JOB_CPUS_PER_NODE")
        if per_node:
            cpus = cpus_per_node(per_node, len(nodes))
        else:
            on_node = env.get("SLURM_CPUS_ON_NODE", "1")
            cpus = [int(on_node) if on_node.isdigit() else 1] * len(nodes)
        return cls(job_id, nodes, cpus)

    def workers(self, cores_per_worker: int = 0) -> list[tuple[str, int, int]]:
        """(node, index on the node, cores) per worker: one per node (0), or one per ``cores_per_worker``."""
        out = []
        for node, cpus in zip(self.nodes, self.cpus, strict=True):
            if cores_per_worker <= 0:
                out.append((node, 1, cpus))
                continue
            out += [(node, k + 1, cores_per_worker) for k in range(max(1, cpus // cores_per_worker))]
        return out


def srun_command(node: str, command: list[str], cores: int = 0, per_node: bool = True) -> list[str]:
    """``srun`` starting ``command`` as one task on ``node``; a worker of part of a node gets its cores only
    (``--exact``, so the node's other workers run beside it)."""
    srun = ["srun", "--nodes=1", "--ntasks=1", "-w", node, f"--job-name=nodepilot-{node}"]
    if not per_node and cores > 0:
        srun += [f"--cpus-per-task={cores}", "--exact"]
    return [*srun, *command]
