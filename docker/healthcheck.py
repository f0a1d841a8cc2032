"""Health check of a nodepilot container: ``GET /healthz`` on its service's Unix socket (which also
pings Redis), or ``GET /jobs`` of ``nodepilot serve``. Exit 0: healthy.

    python healthcheck.py [monitor|runner|stager|eventclient|serve]

Without an argument the role is read from the container's main process (PID 1, or the process
docker-init runs): ``nodepilot service <name>`` or ``nodepilot serve [--port P]``. Only the standard
library: it runs every few seconds and must cost nothing.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from pathlib import Path

TIMEOUT_S = 3.0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(self.path)


def role_of_main_process() -> list[str]:
    """The arguments after ``nodepilot`` of the container's main process."""
    for pid in ("1", *sorted(p for p in os.listdir("/proc") if p.isdigit())):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        names = [os.path.basename(a) for a in argv]
        if "nodepilot" in names:
            return argv[names.index("nodepilot") + 1:]
    return []


def healthy(args: list[str]) -> bool:
    if args[:1] == ["serve"]:
        port = args[args.index("--port") + 1] if "--port" in args else "8080"
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=TIMEOUT_S)
        path = "/jobs"
    else:
        name = args[-1] if args[:1] == ["service"] else (args[0] if args else "")
        run_dir = os.environ.get("NODEPILOT_RUN_DIR", "/run/nodepilot")
        conn, path = UnixConnection(os.path.join(run_dir, f"{name}.sock")), "/healthz"
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def main() -> int:
    args = sys.argv[1:] or role_of_main_process()
    if args and args[0] in ("monitor", "runner", "stager", "eventclient"):
        args = ["service", args[0]]
    return 0 if args and healthy(args) else 1


if __name__ == "__main__":
    sys.exit(main())
