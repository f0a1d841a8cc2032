"""``make run``: a local job server with the sample jobs, and a pilot that runs them all.

Runs exactly what a user would: ``nodepilot serve`` and ``nodepilot start`` as processes.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    parser.add_argument("--jobs", type=Path, default=EXAMPLES / "jobs")
    args = parser.parse_args()
    base = args.dir.resolve()
    shutil.rmtree(base, ignore_errors=True)
    (base / "work").mkdir(parents=True)
    shutil.copytree(EXAMPLES / "se", base / "se")  # the local SE holds the demo inputs
    port_file = base / "server.port"
    nodepilot = [sys.executable, "-m", "nodepilot"]
    server = subprocess.Popen([*nodepilot, "serve", "--jobs", str(args.jobs), "--db", str(base / "server.sqlite"),
                               "--port-file", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():  # bounded start-up wait
            if server.poll() is not None or time.monotonic() > deadline:
                print("the job server did not start", file=sys.stderr)
                return 1
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        pilot = subprocess.run([*nodepilot, "start", "--queue", "LOCAL_TEST", "--server", url,
                                "--workdir", str(base / "work"), "--se-dir", str(base / "se")])
        if sys.stdin.isatty():
            print(f"\njob server ledger: {url}/jobs; press Enter to stop the job server")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        print(f"\njob server ledger kept in {base / 'server.sqlite'}; to look at it again:\n"
              f"  {reopen_command(args.jobs, base)}   (then http://127.0.0.1:8080/jobs)")
        return pilot.returncode
    finally:
        server.terminate()
        server.wait(10)


def reopen_command(jobs: Path, base: Path) -> str:
    """``nodepilot serve`` on the demo's ledger (the jobs it served are not served again), with the
    ``nodepilot`` of this environment (make run's is not on PATH)."""
    script = Path(sys.executable).parent / "nodepilot"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "nodepilot"]
    return shlex.join([*program, "serve", "--jobs", str(jobs), "--db", str(base / "server.sqlite"), "--port", "8080"])


if __name__ == "__main__":
    sys.exit(main())
