"""What supervising a payload costs: CPU seconds of all pilot processes (Redis included) while a sleep
payload runs, as a fraction of the payload's wall time, and peak PSS without Redis, of Redis, and with
it (bench/common.py tells the processes apart). Prints figures.

Target (issue 4): under 0.5 % of one core. Usage: python bench/monitor_overhead.py [seconds]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import job, run_case


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    r = run_case([job(1, f"sleep {seconds:g}")], sample=True)
    wall = r[1]["end"] - r[1]["start"]
    cpu = r["sampler"].cpu_between(r[1]["start"], r[1]["end"])
    print(f"payload wall time (s)                      {wall:8.2f}")
    print(f"pilot CPU while the payload ran (s)        {cpu:8.3f}")
    print(f"pilot CPU / payload wall (% of one core)   {100 * cpu / wall:8.3f}   target < 0.5")
    print(f"peak PSS of the pilot without Redis (MB)   {r['pss_mb']:8.1f}")
    print(f"peak PSS of Redis alone (MB)               {r['redis_pss_mb']:8.1f}")
    print(f"peak PSS of the pilot with Redis (MB)      {r['with_redis_pss_mb']:8.1f}")


if __name__ == "__main__":
    main()
