"""Event-service throughput: prints figures, not a pass/fail test.

``--ranges`` (10,000) event ranges through the whole chain as a user runs it: ``nodepilot serve``
(a process, the ranges in its ledger) -> ``nodepilot start`` (eventclient) -> a payload that does
nothing but take ranges and report each done with a tiny output -> stager (posix, a local SE
directory) -> the server's ledger. The payload is this file (``payload`` sub-command), through the
HTTP API (``--api http``, as examples/es_payload.py) or the line protocol (``--api lines``), asking
for ``--n`` ranges at a time, a request id (a uuid) with every fetch as examples/es_payload.py does;
it stamps when it holds each range and when it reports it.

Figures:
- ranges per second, end to end: N / (first range in the payload's hands -> last range settled in
  the server's ledger: staged and reported);
- per-range overhead (ms) = (payload wall time in the pilot - the same payload's wall time with no
  pilot at all, taking its ranges from a list in memory) / N: the slot time the event service adds;
- latency between a range's report and the next range's start as the payload sees it (p50, p95, max);
- the pilot's CPU seconds per range (all its processes and Redis; payload excluded).
Every range must be settled in the ledger exactly once, with its output on the SE, or it says so.

    python bench/eventservice.py [--ranges 10000] [--api http|lines] [--n 1] [--repeat 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TARGET_MS = 2.0
PANDA_ID = 7001
SCOPE = "bench.es"
OUTPUT = b"0123456789abcdef"  # the tiny output of every range


# --- the payload (run by the pilot as ``python eventservice.py payload ...``) --------------------------
class Http:
    """The HTTP API over the events socket, one kept-alive connection (as a real payload would)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("localhost", timeout=60)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path if len(self.path) < 100 else os.path.relpath(self.path))
        conn.sock = sock
        return conn

    def call(self, url: str, body: dict[str, Any] | None = None) -> Any:
        self.conn.request("POST", url, body=json.dumps(body).encode() if body is not None else None,
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status} {data[:300]!r}")
        return json.loads(data)

    def take(self, n: int) -> list[dict[str, Any]]:
        return self.call(f"/ranges?n={n}&request={uuid.uuid4()}")["ranges"]

    def done(self, range_id: str, output: str, then: int = 0) -> list[dict[str, Any]]:
        body = {"output": output, "n_events": 1, "next": then, **({"request": str(uuid.uuid4())} if then else {})}
        answer = self.call(f"/ranges/{range_id}/done", body)
        return answer.get("ranges", [])


class Lines:
    """The line protocol, both FIFOs kept open for the whole job."""

    def __init__(self, commands: str, answers: str) -> None:
        self.out = open(commands, "w", buffering=1)  # noqa: SIM115
        self.answers = open(answers, "rb", buffering=0)  # noqa: SIM115
        self.buffer = b""

    def ask(self, *lines: str) -> list[str]:
        """The commands in one write (pipelined), their answers."""
        self.out.write("".join(f"{line}\n" for line in lines))
        while self.buffer.count(b"\n") < len(lines):
            chunk = self.answers.read(65536)
            if not chunk:
                raise SystemExit("the answers FIFO was closed")
            self.buffer += chunk
        *answers, self.buffer = self.buffer.split(b"\n", len(lines))
        return [a.decode() for a in answers]

    def take(self, n: int) -> list[dict[str, Any]]:
        return json.loads(self.ask(f"next {n} {uuid.uuid4()}")[0])

    def done(self, range_id: str, output: str, then: int = 0) -> list[dict[str, Any]]:
        answers = self.ask(f"done {range_id} {output} 1", *([f"next {then} {uuid.uuid4()}"] if then else []))
        if not answers[0].startswith("ok"):
            raise SystemExit(f"done {range_id}: {answers[0]}")
        return json.loads(answers[1]) if then else []


class Local:
    """No pilot at all: the baseline (the same payload loop, ranges from a list in memory)."""

    def __init__(self, n_ranges: int) -> None:
        self.ranges = [{"eventRangeID": f"local-{i}"} for i in range(n_ranges)]

    def take(self, n: int) -> list[dict[str, Any]]:
        batch, self.ranges = self.ranges[:n], self.ranges[n:]
        return batch

    def done(self, range_id: str, output: str, then: int = 0) -> list[dict[str, Any]]:
        return self.take(then) if then else []


def payload(api: str, n: int, stats: str, combined: bool, local: int = 0) -> None:
    if local:
        client: Http | Lines | Local = Local(local)
    elif api == "http":
        client = Http(os.environ["NODEPILOT_EVENTS_SOCKET"])
    else:
        client = Lines(os.environ["NODEPILOT_EVENTS_OUT"], os.environ["NODEPILOT_EVENTS_IN"])
    starts: list[float] = []  # a range in hand
    reports: list[float] = []  # its report asked for
    t0 = time.time()
    batch = client.take(n)
    while batch:
        now, following = time.time(), []
        for i, item in enumerate(batch):
            starts.append(now)
            output = f"out_{item['eventRangeID']}"
            with open(output, "wb") as fh:
                fh.write(OUTPUT)
            reports.append(time.time())
            # combined: the last report of a batch asks for the next batch in the same call
            following = client.done(item["eventRangeID"], output, n if combined and i == len(batch) - 1 else 0)
            now = time.time()
        batch = following if combined else client.take(n)
    t1 = time.time()
    if local:
        for item in range(local):
            os.unlink(f"out_local-{item}")
    Path(stats).write_text(json.dumps({"t0": t0, "t1": t1, "starts": starts, "reports": reports}))


# --- the benchmark ---------------------------------------------------------------------------------------
def es_job(n_ranges: int, api: str, n: int, combined: bool) -> dict[str, Any]:
    mode = " --combined" if combined else ""
    return {
        "PandaID": PANDA_ID, "attemptNr": 1, "jobsetID": 7, "taskID": 70, "eventService": "True",
        "transformation": "python3", "jobPars": f"{HERE} payload --api {api} --n {n}{mode} --stats stats.json",
        "outFiles": f"es{PANDA_ID}.log.tgz", "logFile": f"es{PANDA_ID}.log.tgz", "scopeLog": SCOPE,
        "_event_ranges": [{"eventRangeID": f"70-{PANDA_ID}-1-{i}-1", "startEvent": i + 1, "lastEvent": i + 1,
                           "LFN": "EVNT.pool.root", "GUID": "g", "scope": "bench"} for i in range(n_ranges)],
    }


def pilot_cpu(root_pid: int, workdir: Path, cpu: dict[str, float], roles: dict[int, str]) -> None:
    """CPU seconds so far of each of the pilot's processes (not the payload's), into ``cpu`` by role
    (launcher, redis, or the service whose socket it holds)."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            if p.pid not in roles:
                if p.pid == root_pid or "redis" in p.name():
                    roles[p.pid] = "launcher (start-up)" if p.pid == root_pid else "redis"
                elif p.cwd().startswith(str(workdir / f"PanDA_Pilot-{PANDA_ID}")):
                    roles[p.pid] = ""  # the payload
                else:
                    socks = [c.laddr for c in p.net_connections(kind="unix") if str(c.laddr).endswith(".sock")]
                    names = [Path(s).stem for s in socks if Path(s).stem in ("monitor", "runner", "stager",
                                                                              "eventclient")]
                    if not names:
                        continue  # not serving yet: next time
                    roles[p.pid] = names[0]
            if roles[p.pid]:
                t = p.cpu_times()
                cpu[f"{roles[p.pid]}:{p.pid}"] = t.user + t.system
        except psutil.Error:
            pass


def run_once(n_ranges: int, api: str, n: int, combined: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent.parent))
    import httpx

    from bench.harness import NODEPILOT, start_job_server
    from services.stager.paths import deterministic_path

    base = Path(tempfile.mkdtemp(prefix="np-bench-es-"))
    try:
        for d in ("jobs", "work", "se"):
            (base / d).mkdir()
        (base / "jobs" / "00.json").write_text(json.dumps(es_job(n_ranges, api, n, combined)))
        server = start_job_server(base / "jobs", base)
        # the payload (this file) runs in the pilot's sandbox: its directory mounted as a software area
        env = {**os.environ, "NODEPILOT_ISOLATION_BINDS": str(HERE.parent),
               "NODEPILOT_LOG_LEVEL": os.environ.get("NODEPILOT_LOG_LEVEL", "WARNING")}
        cpu: dict[str, float] = {}
        roles: dict[int, str] = {}
        log = base / "pilot.log"
        try:
            with log.open("w") as fh:
                proc = subprocess.Popen([*NODEPILOT, "start", "--queue", "BENCH", "--server", server.url,
                                         "--workdir", str(base / "work"), "--se-dir", str(base / "se")],
                                        stdout=fh, stderr=subprocess.STDOUT, env=env)
                while proc.poll() is None:
                    pilot_cpu(proc.pid, base / "work", cpu, roles)
                    time.sleep(0.2)
            if proc.returncode != 0:
                raise SystemExit(f"the pilot failed ({proc.returncode}): {log.read_text()[-3000:]}")
            if os.environ.get("BENCH_KEEP_LOG"):
                shutil.copy(log, os.environ["BENCH_KEEP_LOG"])
            ledger = httpx.get(f"{server.url}/jobs/{PANDA_ID}/ranges", timeout=60).json()
        finally:
            server.process.terminate()
            server.process.wait(10)
        wd = base / "work" / f"PanDA_Pilot-{PANDA_ID}"
        if not (wd / "stats.json").exists():
            stderr = (wd / "payload.stderr").read_text() if (wd / "payload.stderr").exists() else ""
            raise SystemExit(f"the payload did not finish: {stderr[-3000:]}\n{ledger[:3]}")
        stats = json.loads((wd / "stats.json").read_text())
        problems = check_ledger(ledger, base / "se", deterministic_path)
        local = base / "local"
        local.mkdir()
        subprocess.run(["python3", str(HERE), "payload", "--local", str(n_ranges), "--n", str(n),
                        *(["--combined"] if combined else []), "--stats", str(local / "stats.json")],
                       cwd=local, check=True)
        baseline = json.loads((local / "stats.json").read_text())
        settled = max(u["time"] for item in ledger for u in item["updates"])
        gaps = sorted(start - report for start, report in zip(stats["starts"][1:], stats["reports"][:-1], strict=True))
        return {"wall": stats["t1"] - stats["t0"], "baseline": baseline["t1"] - baseline["t0"],
                "end_to_end": settled - stats["starts"][0], "gaps": gaps, "problems": problems,
                "pilot_cpu": cpu}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def check_ledger(ledger: list[dict[str, Any]], se: Path, deterministic_path: Any) -> list[str]:
    problems = []
    for item in ledger:
        finals = [u for u in item["updates"] if u["applied"]]
        if item["status"] != "finished" or len(item["updates"]) != 1 or len(finals) != 1:
            problems.append(f"{item['eventRangeID']}: {item['status']}, {len(item['updates'])} updates")
            continue
        lfn = finals[0]["zipFile"]["lfn"]
        if not (se / deterministic_path(SCOPE, lfn)).is_file():
            problems.append(f"{item['eventRangeID']}: {lfn} not on the SE")
    return problems


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("payload", help="the benchmark's payload (run by the pilot)")
    p.add_argument("--api", choices=("http", "lines"), default="http")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--stats", required=True)
    p.add_argument("--local", type=int, default=0, help="no pilot: this many ranges from memory (the baseline)")
    p.add_argument("--combined", action="store_true")
    parser.add_argument("--ranges", type=int, default=10_000)
    parser.add_argument("--api", choices=("http", "lines"), default="http")
    parser.add_argument("--n", type=int, default=1, help="ranges the payload asks for at a time")
    parser.add_argument("--combined", action="store_true",
                        help="report a range and take the next in one call (HTTP: done with next; lines: pipelined)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.command == "payload":
        payload(args.api, args.n, args.stats, args.combined, args.local)
        return
    runs = [run_once(args.ranges, args.api, args.n, args.combined) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall"])
    n = args.ranges
    overhead_ms = 1000 * (best["wall"] - best["baseline"]) / n
    load = os.getloadavg()[0]
    how = "report and next range in one call" if args.combined else "separate calls"
    print(f"{n} ranges, payload API {args.api}, {args.n} range(s) per request, {how}; best of {args.repeat} "
          f"(load average {load:.1f} on {os.cpu_count()} cores)")
    rows = [
        ("ranges per second, end to end (first range taken -> last settled at the server)", n / best["end_to_end"]),
        ("ranges per second as the payload sees them", n / best["wall"]),
        ("payload wall time in the pilot (s)", best["wall"]),
        ("payload-only baseline wall time (s)", best["baseline"]),
        (f"per-range overhead (ms), target < {TARGET_MS}", overhead_ms),
        ("report -> next range start, p50 (ms)", 1000 * percentile(best["gaps"], 0.50)),
        ("report -> next range start, p95 (ms)", 1000 * percentile(best["gaps"], 0.95)),
        ("report -> next range start, max (ms)", 1000 * (best["gaps"][-1] if best["gaps"] else float("nan"))),
        ("pilot CPU per range, all pilot processes and Redis (ms)", 1000 * sum(best["pilot_cpu"].values()) / n),
    ]
    by_role: dict[str, float] = {}
    for key, seconds in best["pilot_cpu"].items():
        by_role[key.partition(":")[0]] = by_role.get(key.partition(":")[0], 0.0) + seconds
    rows += [(f"  of which {role} (ms)", 1000 * seconds / n) for role, seconds in sorted(by_role.items())]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:10.3f}")
    if len(runs) > 1:
        print("per-range overhead of every run (ms): "
              + ", ".join(f"{1000 * (r['wall'] - r['baseline']) / n:.3f}" for r in runs))
    problems = [p for r in runs for p in r["problems"]]
    print(f"ledger: {'every range settled once, its output on the SE' if not problems else problems[:10]}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
