"""A payload that tries to reach what the pilot keeps to itself; run by the sandbox tests (in the
sandbox, and plain for contrast). Writes ``attempts.json`` in its cwd: each attempt "allowed" or
"denied: <why>", and what it saw of its cwd and environment. Standard library only.

    python3 sandbox_probe.py RUN_DIR PROXY OUTSIDE_FILE HOST_TMP_FILE SYSTEM_FILE HOME_FILE
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import socket
import sys
from collections.abc import Callable

ATTEMPTS = ("read_proxy", "read_pilot_json", "connect_redis", "monitor_api", "runner_api",
            "write_outside_workdir", "write_host_tmp", "write_system_dir", "write_home", "see_pilot_processes",
            "proxy_in_environment")


class Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.socket_path)


def read(path: str) -> None:
    with open(path, "rb") as fh:
        if not fh.read():
            raise OSError("empty")  # masked with /dev/null


def write(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("escaped")


def redis_ping(run: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(os.path.join(run, "redis", "redis.sock"))
        s.sendall(b"PING\r\n")
        if not s.recv(64):
            raise OSError("no answer")


def api(run: str, service: str) -> None:
    conn = Unix(os.path.join(run, f"{service}.sock"))
    conn.request("GET", "/status")
    if conn.getresponse().status >= 400:
        raise OSError("refused")


def pilot_processes() -> None:
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as fh:
                text = fh.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"nodepilot" in text and b"sandbox_probe" not in text and b"bwrap" not in text:
            return
    raise OSError("no process of the pilot in sight")


def main() -> None:
    run, proxy, outside, host_tmp, system_file, home_file = sys.argv[1:7]
    actions: dict[str, Callable[[], object]] = {
        "read_proxy": lambda: read(proxy),
        "read_pilot_json": lambda: read(os.path.join(run, "pilot.json")),
        "connect_redis": lambda: redis_ping(run),
        "monitor_api": lambda: api(run, "monitor"),
        "runner_api": lambda: api(run, "runner"),
        "write_outside_workdir": lambda: write(outside),  # into the sandbox's private /tmp, if at all
        "write_host_tmp": lambda: write(host_tmp),
        "write_system_dir": lambda: write(system_file),
        "write_home": lambda: write(home_file),
        "see_pilot_processes": pilot_processes,
        "proxy_in_environment": lambda: os.environ["X509_USER_PROXY"],
    }
    tried = {}
    for name in ATTEMPTS:
        try:
            actions[name]()
            tried[name] = "allowed"
        except Exception as exc:
            tried[name] = f"denied: {exc.__class__.__name__}: {exc}"
    info = {"cwd": os.getcwd(), "home": os.environ.get("HOME"), "probe_var": os.environ.get("NP_PROBE_VAR")}
    with open("attempts.json", "w") as fh:
        json.dump({"attempts": tried, "info": info}, fh, indent=1)


WRITES = {"write_outside_workdir": 2, "write_host_tmp": 3, "write_system_dir": 4, "write_home": 5}  # in args


def verdicts(tried: dict[str, str], args: list[str]) -> dict[str, str]:
    """Each attempt "allowed" or "denied", a write judged by the host: the file it tried is not there
    (a sandbox's private /tmp takes writes that never reach the host)."""
    out = {name: outcome.split(":")[0] for name, outcome in tried.items()}
    for name, index in WRITES.items():
        out[name] = "allowed" if os.path.exists(args[index]) else "denied"
    return out


if __name__ == "__main__":
    main()
