"""Slot time the pilot wastes: prints figures, not a pass/fail test.

Runs ``nodepilot start`` against ``nodepilot serve`` as a user would and measures:
- launch -> payload start, with no inputs and with 10 local inputs (the payload stamps its start);
- slot time wasted per job = pilot wall time - payload wall time, for a 5 s payload that
  succeeds and one that fails (the baseline is the payload's own wall time, same run);
- peak PSS of all pilot processes with Redis (payload excluded) while the payload runs.
Reference pilot for comparison: payload with inputs starts 11.5 s after launch, a failed
job is reported 115 s late, and the pilot lingers 60 s after its last update.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
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
from tests.e2e.conftest import NODEPILOT, start_job_server  # noqa: E402

STAMP = "date +%s.%N > {name}"
REPEAT = 5


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


class PssSampler(threading.Thread):
    """Samples the PSS of the pilot's processes (not the payload's) every 100 ms."""

    def __init__(self, root_pid: int, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.workdir, self.peak_kb, self.stop = root_pid, str(workdir), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                root = psutil.Process(self.root_pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for p in procs:
                try:
                    if p.cwd().startswith(self.workdir):
                        continue  # the payload, not the pilot
                    total += p.memory_full_info().pss // 1024
                except psutil.Error:
                    pass
            self.peak_kb = max(self.peak_kb, total)


def run_case(jobs: list[dict], se_seed: Path | None = None, sample: bool = False) -> dict:
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
                                     "--workdir", str(base / "work"), "--se-dir", str(base / "se")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sampler = PssSampler(proc.pid, base / "work")
            if sample:
                sampler.start()
            proc.wait(300)
            t_exit = time.time()
            sampler.stop.set()
        finally:
            server.process.terminate()
            server.process.wait(10)
        out = {"launch": t_launch, "exit": t_exit, "pss_mb": sampler.peak_kb / 1024, "code": proc.returncode}
        for j in jobs:
            wd = base / "work" / f"PanDA_Pilot-{j['PandaID']}"
            out[j["PandaID"]] = {k: float((wd / f"t_{k}").read_text()) for k in ("start", "end")
                                 if (wd / f"t_{k}").exists()}
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    rows = []
    run_case([job(0, "true")])  # warm the page cache: imports are not what we measure
    starts = []
    for _ in range(REPEAT):
        r = run_case([job(1, "true")])
        starts.append(r[1]["start"] - r["launch"])
    rows.append((f"launch -> payload start, no inputs (s, median of {REPEAT})", statistics.median(starts), 0.6))

    base = Path(tempfile.mkdtemp())
    inputs = [put_input(base, "bench.in", f"in{i}.dat", os.urandom(1 << 20)) for i in range(10)]
    j = job(2, "true", inputs)
    starts = []
    for _ in range(REPEAT):
        r = run_case([j], se_seed=base)
        starts.append(r[2]["start"] - r["launch"])
    rows.append((f"launch -> payload start, 10 local inputs (s, median of {REPEAT})", statistics.median(starts), 1.0))
    shutil.rmtree(base, ignore_errors=True)

    r = run_case([job(3, "sleep 5")], sample=True)
    payload = r[3]["end"] - r[3]["start"]
    rows.append(("slot time wasted, 5 s payload that succeeds (s)", (r["exit"] - r["launch"]) - payload, 1.5))
    pss = r["pss_mb"]
    r = run_case([job(4, "sleep 5; (exit 3)")])
    payload = r[4]["end"] - r[4]["start"]
    rows.append(("slot time wasted, 5 s payload that fails (s)", (r["exit"] - r["launch"]) - payload, 2.0))
    rows.append(("peak PSS of the pilot with Redis (MB)", pss, 100.0))

    width = max(len(name) for name, *_ in rows)
    print(f"{'measure':<{width}}  {'value':>8}  {'target':>7}  ratio to target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:8.3f}  {target:7.2f}  {value / target:5.2f}")


if __name__ == "__main__":
    main()
