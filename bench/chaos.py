"""Chaos: 20 trials per victim (monitor, runner, stager, eventclient, Redis), each a job whose victim
is killed with SIGKILL once at a random moment, uniform over the whole job (stage-in to the final
update, as the jobs before measured it: their median), then a table: kills landed (the job was still
in progress at the kill), right final update (finished, no pilot error), outputs on the SE with the
checksum and size the final update reports (event service: every range settled exactly once, each
finished range's output on the SE with its size). A moment that fell after its job's end is counted
(the "trials" column) and made up by another trial, until 20 kills landed (at most twice as many
trials); the last two columns count every trial.

Usage: python bench/chaos.py [--trials 20] [--victims monitor,runner,...] [--seed N]
(tests/e2e/test_fault_injection.py runs a few trials per victim in CI, every kill inside the payload.)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.faults import VICTIMS, TrialError, over_the_job, run_trials
from bench.harness import EXAMPLES, start_job_server


def one_victim(victim: str, trials: int, seed: int) -> dict[str, object]:
    site = Path(tempfile.mkdtemp(prefix=f"np-chaos-{victim}-"))
    try:
        shutil.copytree(EXAMPLES / "se", site / "se")
        (site / "work").mkdir()
        (site / "jobs").mkdir()
        server = start_job_server(site / "jobs", site)
        t0, rng, done, error = time.monotonic(), random.Random(seed), [], ""
        try:
            while (missing := trials - sum(t.killed for t in done)) > 0 and len(done) < 2 * trials:
                done += run_trials(site, server, victim, min(missing, 2 * trials - len(done)),
                                   10000 + len(done), over_the_job(rng), site / "pilot.log")
        except TrialError as exc:
            error = str(exc).splitlines()[0]
        finally:
            server.process.terminate()
            server.process.wait(10)
        return {"victim": victim, "trials": len(done), "landed": sum(t.killed for t in done),
                "right_final": sum(not any(p.startswith("final update") for p in t.problems) for t in done),
                "outputs_ok": sum(not t.problems for t in done), "seconds": time.monotonic() - t0,
                "problems": [t.line for t in done if t.problems], "error": error}
    finally:
        shutil.rmtree(site, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--victims", default=",".join(VICTIMS))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**9)
    os.environ.setdefault("NODEPILOT_ISOLATION_BINDS", str(EXAMPLES))  # es_payload.py, read-only in the sandbox
    os.environ.setdefault("NODEPILOT_LOG_LEVEL", "INFO")
    print(f"chaos: {args.trials} trials per victim, seed {seed}", flush=True)
    rows = []
    for victim in args.victims.split(","):
        row = one_victim(victim, args.trials, seed)
        rows.append(row)
        print(f"  {victim}: done in {row['seconds']:.0f} s", flush=True)
    print()
    print("| victim | trials | kills landed | right final update | outputs on the SE, checksum right |")
    print("|---|---|---|---|---|")
    for row in rows:
        n = row["trials"]
        print(f"| {row['victim']} | {n} | {row['landed']} | {row['right_final']}/{n} | {row['outputs_ok']}/{n} |")
    for row in rows:
        for line in row["problems"]:
            print(f"{row['victim']}: {line}")
        if row["error"]:
            print(f"{row['victim']}: stopped: {row['error']}")
    ok = all(not row["problems"] and not row["error"] and row["landed"] >= args.trials for row in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
