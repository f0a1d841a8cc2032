"""What the benchmarks share: sample jobs, a local SE, running a pilot, sampling its processes.

Processes are told apart so that each figure says what it counts: Redis (``redis-server``, by name)
is counted on its own, payloads are the processes working in a job's work dir (``PanDA_Pilot-*``),
the pilot is everything else the launcher started (launcher, services, their helpers)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import NODEPILOT, start_job_server  # noqa: E402 (start_job_server: for the benchmarks)

STAMP = "date +%s.%N > {name}"
REPEAT = 5


def compile_tree() -> None:
    """The tree's bytecode written, as an install writes it: under PYTHONDONTWRITEBYTECODE (or with stale
    bytecode after an edit) every pilot a benchmark starts would compile each module it imports again, a
    start-up no deployed pilot has."""
    import compileall

    for package in ("nodepilot", "services"):
        compileall.compile_dir(ROOT / package, quiet=1)


def put_input(se: Path, scope: str, lfn: str, data: bytes) -> dict:
    h = hashlib.md5(f"{scope}:{lfn}".encode()).hexdigest()
    path = se / scope.replace(".", "/") / h[:2] / h[2:4] / lfn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"lfn": lfn, "fsize": len(data), "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}"}


def job(panda_id: int, body: str, inputs: list[dict] | None = None) -> dict:
    inputs = inputs or []
    return {
        "PandaID": panda_id, "attemptNr": 1, "transformation": "bash",
        "jobPars": f"-c '{STAMP.format(name='t_start')}; {body}; rc=$?; {STAMP.format(name='t_end')}; exit $rc'",
        "inFiles": ",".join(f["lfn"] for f in inputs), "fsize": ",".join(str(f["fsize"]) for f in inputs),
        "checksum": ",".join(f["checksum"] for f in inputs), "scopeIn": "bench.in" if inputs else "",
        "outFiles": f"bench.{panda_id}.log.tgz", "logFile": f"bench.{panda_id}.log.tgz", "scopeLog": "bench.log",
    }


def kind_of(p: psutil.Process, workdir: str) -> str:
    """"redis", "payload" (working in a job's work dir) or "pilot"."""
    if "redis-server" in p.name():
        return "redis"
    return "payload" if p.cwd().startswith(f"{workdir}/PanDA_Pilot-") else "pilot"


def role_of(p: psutil.Process, root_pid: int) -> str:
    """Which pilot process: "launcher" (the one started), a service (named np-<service> by the launcher),
    "redis", or "other" (a helper process)."""
    if p.pid == root_pid:
        return "launcher"
    name = p.name()
    if "redis-server" in name:
        return "redis"
    return name[3:] if name.startswith("np-") else "other"


class PilotSampler(threading.Thread):
    """Samples PSS and CPU time of the pilot's processes every 100 ms: ``peak_kb`` the pilot without
    Redis, ``redis_peak_kb`` Redis alone, ``with_redis_peak_kb`` both (payloads never). CPU: the
    pilot's processes with Redis."""

    def __init__(self, root_pid: int, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.workdir, self.stop = root_pid, str(workdir), threading.Event()
        self.peak_kb = self.redis_peak_kb = self.with_redis_peak_kb = 0
        self.roles_at_peak: dict[str, int] = {}  # PSS (kB) of each pilot process when pilot + Redis peaked
        self.cpu: dict[int, float] = {}  # latest CPU seconds per pilot process (Redis included)
        self.cpu_series: list[tuple[float, float]] = []  # (time, CPU seconds of all pilot processes)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                root = psutil.Process(self.root_pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            pss = {"pilot": 0, "redis": 0, "payload": 0}
            roles: dict[str, int] = {}
            for p in procs:
                try:
                    kind = kind_of(p, self.workdir)
                    kb = p.memory_full_info().pss // 1024
                    pss[kind] += kb
                    if kind != "payload":
                        role = role_of(p, self.root_pid)
                        roles[role] = roles.get(role, 0) + kb
                    if kind != "payload":
                        times = p.cpu_times()
                        self.cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak_kb = max(self.peak_kb, pss["pilot"])
            self.redis_peak_kb = max(self.redis_peak_kb, pss["redis"])
            if pss["pilot"] + pss["redis"] > self.with_redis_peak_kb:
                self.with_redis_peak_kb, self.roles_at_peak = pss["pilot"] + pss["redis"], roles
            self.cpu_series.append((time.time(), sum(self.cpu.values())))

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds the pilot used between two times (nearest samples)."""
        inside = [c for t, c in self.cpu_series if t0 <= t <= t1]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def run_case(jobs: list[dict], se_seed: Path | None = None, sample: bool = False,
             options: tuple[str, ...] = ()) -> dict:
    base = Path(tempfile.mkdtemp(prefix="np-bench-"))
    try:
        (base / "jobs").mkdir()
        (base / "work").mkdir()
        if se_seed is not None:
            shutil.copytree(se_seed, base / "se")
        else:
            (base / "se").mkdir()
        for i, j in enumerate(jobs):
            (base / "jobs" / f"{i:02d}.json").write_text(json.dumps(j))
        server = start_job_server(base / "jobs", base)
        try:
            t_launch = time.time()
            proc = subprocess.Popen([*NODEPILOT, "start", "--queue", "BENCH", "--server", server.url,
                                     "--workdir", str(base / "work"), "--se-dir", str(base / "se"), *options],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sampler = PilotSampler(proc.pid, base / "work")
            if sample:
                sampler.start()
            proc.wait(300)
            t_exit = time.time()
            sampler.stop.set()
        finally:
            server.process.terminate()
            server.process.wait(10)
        out = {"launch": t_launch, "exit": t_exit, "pss_mb": sampler.peak_kb / 1024,
               "redis_pss_mb": sampler.redis_peak_kb / 1024, "with_redis_pss_mb": sampler.with_redis_peak_kb / 1024,
               "pss_by_process_mb": {k: v / 1024 for k, v in sampler.roles_at_peak.items()},
               "code": proc.returncode, "sampler": sampler}
        for j in jobs:
            wd = base / "work" / f"PanDA_Pilot-{j['PandaID']}"
            out[j["PandaID"]] = {k: float((wd / f"t_{k}").read_text()) for k in ("start", "end")
                                 if (wd / f"t_{k}").exists()}
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)
