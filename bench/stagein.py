"""Stage-in wall time: nodepilot's stager against the raw copy tools. Prints figures, not a pass/fail test.

XRootD: ``--files`` files of ``--size-mb`` MB on a real xrootd server (started with bench/servers.py,
which the mover tests use too), staged in by the stager running as a real service process on a real
Redis, timed from the request on ``stager:requests`` to its ``stagein_done`` event (adler32 verified
while streaming), against ``xrdcp`` of the same files one by one and ``--parallel`` at a time.
The same for the posix mover (a local SE directory): copying against ``cp``, and in link mode
(``NODEPILOT_POSIX_COPY_MODE=link``: hard links, still read once for the checksum) against ``ln``,
the raw tool that does the same thing (a link, no read: the stager's read for the checksum is its
cost). Each case runs ``--repeat`` times (median), with the destination emptied between runs; the
sources are in the page cache for every case. xrdcp also runs without page reads
(``XRD_CPUSEPGWRTRD=0``), its fastest setting here; the raw tools verify no checksum, nodepilot does
(adler32 while streaming).
Target: nodepilot <= 1.05 x the best raw tool.

Rucio (``--no-rucio`` skips it): the same files on the XRootD RSE of a real Rucio server
(bench/rucio_server.py; its venv is made on first use; memcached as its cache when installed, as
production servers have; the title line says which), staged in through the ``rucio`` mover
(replicas listed by Rucio, copied by the XRootD mover, a trace per file sent to Rucio) against the
XRootD mover alone. Target: Rucio <= 1.1 x the XRootD mover alone. Printed too: the ratio of each round
(its two runs follow each other, in turn first: less swayed by whatever else loads the machine); the CPU
time the Rucio server (its calls and its traces; both cases send the same traces to it), the stager and
the XRootD server spent per stage-in; and from the traces, when the first copy started after the request
was sent and how long a copy took, among the first ``--parallel`` copies (those that run beside the
listing) and the later ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import read_events, running_service
from bench.servers import XRootDServer, cpu_seconds, running
from nodepilot import bus
from nodepilot.config import PilotConfig
from nodepilot.queue.model import QueueData
from nodepilot.redis_server import start_redis
from services.stager.movers.posix import COPY_MODE_ENV
from services.stager.paths import deterministic_path, join_url
from services.stager.traces import SENDING_KEY, SPOOL_KEY

SCOPE = "bench.in"
# xrdcp 5.x reads with kXR_pgread (a crc32c per 4 kB page), 3x slower here; without it, xrdcp at its best
NO_PGREAD = {"XRD_CPUSEPGWRTRD": "0"}
TARGET = 1.05
RUCIO_TARGET = 1.1


def make_inputs(count: int, size: int, put: Callable[[str, bytes], None], scope: str = SCOPE) -> list[dict]:
    """``count`` random files stored with ``put(relative path, data)``; their job-file entries."""
    files = []
    for i in range(count):
        data = os.urandom(size)
        lfn = f"in{i:03d}.dat"
        put(deterministic_path(scope, lfn), data)
        files.append({"lfn": lfn, "scope": scope, "guid": f"g-{lfn}", "fsize": size, "dataset": "bench",
                      "checksum": f"ad:{zlib.adler32(data) & 0xFFFFFFFF:08x}", "ddm_endpoint": "SE"})
    return files


class Stager:
    """The stager as a service process; one stage-in request at a time, timed."""

    def __init__(self, config: PilotConfig, rds: redis.Redis) -> None:
        self.config, self.rds, self.job_id = config, rds, 1000
        self.sent: dict[int, float] = {}  # job id -> when its request was sent (time.time(), as traces are)

    def stage_in(self, endpoint_url: str, files: list[dict], workdir: Path) -> float:
        self.drain_traces()
        self.job_id += 1
        message = {"kind": "stagein", "job_id": self.job_id, "request_id": f"{self.job_id}:1:stagein",
                   "workdir": str(workdir), "endpoints": [{"name": "SE", "url": endpoint_url}], "files": files}
        started = time.monotonic()
        self.sent[self.job_id] = time.time()
        self.rds.xadd(bus.STAGER_REQUESTS, bus.encode(message))
        event = read_events(self.rds, self.job_id, {"stagein_done"}, timeout=600)[-1]
        elapsed = time.monotonic() - started
        if not event.get("ok"):
            raise RuntimeError(f"stage-in failed: {event.get('error_code')} {event.get('diag')}")
        return elapsed

    def drain_traces(self, timeout: float = 60.0) -> None:
        """Wait until the previous run's traces are delivered: no run pays for another's."""
        deadline = time.monotonic() + timeout
        while (self.rds.llen(SPOOL_KEY) or self.rds.llen(SENDING_KEY)) and time.monotonic() < deadline:
            time.sleep(0.05)


def run_commands(commands: list[list[str]], parallel: int, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    environ = {**os.environ, **(env or {})}
    with ThreadPoolExecutor(parallel) as pool:
        for done in pool.map(lambda c: subprocess.run(c, stdout=subprocess.DEVNULL, env=environ, check=False),
                             commands):
            if done.returncode:
                raise RuntimeError(f"{done.args} exited with {done.returncode}")
    return time.monotonic() - started


def measure(cases: dict[str, Callable[[], float]], repeat: int, workdir: Path,
            times: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median wall time of each case. The cases take turns (one run of each per round; every other round
    in the reverse order, so that no case is always the one run first), each run on an empty destination
    after a sync, so no case pays for the write-back of another's copies. ``times``, when given, gets
    every run's wall time too."""
    times = {} if times is None else times
    times.update({name: [] for name in cases})
    for round_ in range(repeat):
        for name, case in list(cases.items())[:: -1 if round_ % 2 else 1]:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            os.sync()
            times[name].append(case())
    shutil.rmtree(workdir, ignore_errors=True)
    return {name: statistics.median(values) for name, values in times.items()}


def compare(title: str, rows: dict[str, float], total_mb: float) -> None:
    best_raw = min(v for k, v in rows.items() if not k.startswith("nodepilot"))
    print(f"\n{title}")
    print(f"  {'case':<36} {'wall s':>8} {'MB/s':>8} {'x best raw':>10}")
    for name, wall in rows.items():
        print(f"  {name:<36} {wall:8.3f} {total_mb / wall:8.0f} {wall / best_raw:10.3f}")
    for name, wall in rows.items():
        if name.startswith("nodepilot"):
            ratio = wall / best_raw
            print(f"  {name} / best raw tool = {ratio:.3f} (target <= {TARGET}): "
                  f"{'OK' if ratio <= TARGET else 'SLOWER'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=50)
    parser.add_argument("--parallel", type=int, default=4, help="raw tool copies at once (the stager's "
                                                                  "files_per_request is set to the same)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-rucio", action="store_true", help="skip the Rucio case")
    parser.add_argument("--rucio-only", action="store_true", help="only the Rucio case")
    args = parser.parse_args()
    size, n = int(args.size_mb * 1e6), args.parallel
    total_mb = args.files * size / 1e6
    base = Path(tempfile.mkdtemp(prefix="np-bench-stagein-"))
    server = start_redis(base / "redis")
    try:
        rds = redis.Redis.from_url(server.url, decode_responses=True)
        local_se = base / "se"
        config = PilotConfig(queue="BENCH", site="BENCH", run_dir=str(base / "run"), work_dir=str(base / "work"),
                             redis_url=server.url, se_dir=str(local_se))
        config.queuedata = QueueData.default("BENCH", local_se)
        config.queuedata.stager = {"files_per_request": n}
        for d in (config.run_dir, config.work_dir, local_se):
            Path(d).mkdir(parents=True, exist_ok=True)
        dst = Path(config.work_dir) / "PanDA_Pilot-bench"
        stager = Stager(config, rds)
        print(f"{args.files} files of {args.size_mb:g} MB ({total_mb:.0f} MB), {n} at once, "
              f"median of {args.repeat} runs, {os.cpu_count()} cores")

        if args.rucio_only:
            bench_rucio(args, config, stager, dst, size, total_mb)
            return
        with running(XRootDServer) as xrd, running_service("stager", config):
            files = make_inputs(args.files, size, xrd.put)
            urls = [xrd.file_url(deterministic_path(SCOPE, f["lfn"])) for f in files]
            xrdcp = [["xrdcp", "-s", "-f", url, str(dst / f["lfn"])] for url, f in zip(urls, files, strict=True)]
            measure({"warm-up": lambda: stager.stage_in(xrd.url, files, dst)}, 1, dst)  # imports, connections
            compare("XRootD (root://127.0.0.1)", measure({
                "nodepilot stager": lambda: stager.stage_in(xrd.url, files, dst),
                "xrdcp one by one": lambda: run_commands(xrdcp, 1),
                f"xrdcp {n} at a time": lambda: run_commands(xrdcp, n),
                "xrdcp one by one, no pgread": lambda: run_commands(xrdcp, 1, NO_PGREAD),
                f"xrdcp {n} at a time, no pgread": lambda: run_commands(xrdcp, n, NO_PGREAD),
            }, args.repeat, dst), total_mb)
        shutil.rmtree(xrd.base, ignore_errors=True)  # room for the next case's files
        if not args.no_rucio:
            bench_rucio(args, config, stager, dst, size, total_mb)

        def put_local(relative: str, data: bytes) -> None:
            path = local_se / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        files = make_inputs(args.files, size, put_local)
        se_url = local_se.resolve().as_uri()
        sources = [(str(local_se / deterministic_path(SCOPE, f["lfn"])), str(dst / f["lfn"])) for f in files]
        cp = [["cp", src, to] for src, to in sources]
        ln = [["ln", src, to] for src, to in sources]
        with running_service("stager", config):
            compare(f"posix, copy ({join_url(se_url, '')})", measure({
                "nodepilot stager": lambda: stager.stage_in(se_url, files, dst),
                "cp one by one": lambda: run_commands(cp, 1),
                f"cp {n} at a time": lambda: run_commands(cp, n),
            }, args.repeat, dst), total_mb)
        # the stager started inside reads its posix copy mode from the environment
        with mock.patch.dict(os.environ, {COPY_MODE_ENV: "link"}), running_service("stager", config):
            compare(f"posix, hard links ({join_url(se_url, '')})", measure({
                "nodepilot stager, link mode": lambda: stager.stage_in(se_url, files, dst),
                "ln one by one": lambda: run_commands(ln, 1),
                f"ln {n} at a time": lambda: run_commands(ln, n),
            }, args.repeat, dst), total_mb)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def bench_rucio(args: argparse.Namespace, config: PilotConfig, stager: Stager, dst: Path, size: int,
                total_mb: float) -> None:
    """Stage-in through Rucio against the XRootD mover alone, on the same XRootD server and files."""
    from bench.rucio_server import SCOPE as RUCIO_SCOPE
    from bench.rucio_server import rucio_running

    with rucio_running() as rucio:
        xrd = rucio.xrootd
        files = make_inputs(args.files, size, xrd.put, RUCIO_SCOPE)  # at Rucio's (hash) paths
        replicas = [{"scope": RUCIO_SCOPE, "name": f["lfn"], "bytes": size, "adler32": f["checksum"][3:]}
                    for f in files]
        rucio.tool("register", {"replicas": {"XRD_RSE": replicas}})
        config.queuedata.stager = {**config.queuedata.stager, "rucio": {}}
        cpu: dict[str, dict[str, list[float]]] = {}  # case -> process -> CPU seconds of each run
        jobs: dict[str, list[int]] = {}
        processes: dict[str, Callable[[], float]] = {"Rucio": rucio.cpu_seconds, "xrootd": xrd.cpu_seconds}

        def on_rucio(name: str, case: Callable[[], float]) -> Callable[[], float]:
            """The case, and the CPU time each process spent on it: Rucio's server (its calls and its traces,
            delivered before the CPU is read, after the wall time is taken), the stager, the XRootD server."""
            def run() -> float:
                before = {what: used() for what, used in processes.items()}
                wall = case()
                stager.drain_traces()
                for what, used in processes.items():
                    cpu.setdefault(name, {}).setdefault(what, []).append(used() - before[what])
                jobs.setdefault(name, []).append(stager.job_id)
                return wall
            return run

        walls: dict[str, list[float]] = {}
        with mock.patch.dict(os.environ, {"RUCIO_CONFIG": str(rucio.client_config)}), \
                running_service("stager", config) as service:
            processes["stager"] = lambda: cpu_seconds(service.pid)
            through = {"nodepilot stager, rucio mover": lambda: stager.stage_in("rucio:///XRD_RSE", files, dst)}
            measure(through, 1, dst)  # warm-up: token, connections
            cases = {**through, "nodepilot stager, xrootd mover alone": lambda: stager.stage_in(xrd.url, files, dst)}
            rows = measure({name: on_rucio(name, case) for name, case in cases.items()}, args.repeat, dst, walls)
        records = rucio.traces()
        traces = len(records)
        cache = "memcached" if rucio.cache is not None else "none"
    rucio_wall, alone = rows["nodepilot stager, rucio mover"], rows["nodepilot stager, xrootd mover alone"]
    print(f"\nRucio (list_replicas, then root://127.0.0.1; Rucio's cache: {cache}; {traces} traces reached Rucio)")
    print(f"  {'case':<36} {'wall s':>6} {'MB/s':>5} {'CPU ms: Rucio':>13} {'stager':>6} {'xrootd':>6} "
          f"{'1st copy at':>11} {'copy ms':>7} {'(later)':>7}")
    for name, wall in rows.items():
        first, early, late = timeline(records, jobs[name], stager.sent, args.parallel)
        used = {what: 1000 * statistics.median(values) for what, values in cpu[name].items()}
        print(f"  {name:<36} {wall:6.3f} {total_mb / wall:5.0f} {used['Rucio']:13.0f} {used['stager']:6.0f} "
              f"{used['xrootd']:6.0f} {first:11.0f} {early:7.0f} {late:7.0f}")
    paired = [r / a for r, a in zip(walls["nodepilot stager, rucio mover"],
                                    walls["nodepilot stager, xrootd mover alone"], strict=True)]
    print(f"  each round, rucio / xrootd alone: {' '.join(f'{r:.3f}' for r in paired)} "
          f"(median {statistics.median(paired):.3f})")
    ratio = rucio_wall / alone
    print(f"  rucio / xrootd alone = {ratio:.3f} (target <= {RUCIO_TARGET}): "
          f"{'OK' if ratio <= RUCIO_TARGET else 'SLOWER'}")


def timeline(records: list[dict], job_ids: list[int], sent: dict[int, float],
             wave: int) -> tuple[float, float, float]:
    """From a case's traces, medians over its runs (ms): when its first copy started after the request
    was sent; how long one file's copy took among the first ``wave`` copies, and among the others."""
    firsts, early, late = [], [], []
    for job_id in job_ids:
        mine = sorted((r for r in records if r.get("appid") == job_id), key=lambda r: r["transferStart"])
        if mine:
            firsts.append(mine[0]["transferStart"] - sent[job_id])
            early.append(statistics.median(r["timeEnd"] - r["transferStart"] for r in mine[:wave]))
            late.append(statistics.median(r["timeEnd"] - r["transferStart"] for r in mine[wave:] or mine))
    if not firsts:
        return 0.0, 0.0, 0.0
    return 1000 * statistics.median(firsts), 1000 * statistics.median(early), 1000 * statistics.median(late)


if __name__ == "__main__":
    main()
