#!/usr/bin/env python3
"""A tiny event-service payload: takes event ranges from the pilot's events socket, writes one
output file per range, reports each one done, and stops when no range is left.

Only the Python standard library (http.client over an AF_UNIX socket). The socket path comes from
NODEPILOT_EVENTS_SOCKET (the pilot sets it), default ./events.sock. A connection that fails
(the eventclient restarting) or an answer 503 is retried for --retry-s seconds. Every fetch of
ranges carries a request id of its own (a uuid), the same on its retries: a fetch whose answer was
lost (the eventclient killed after handing the ranges out) gets the same ranges again, not others.

    python es_payload.py [--n 1] [--fail-every K] [--sleep S] [--retry-s 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
import uuid
from typing import Any

SUN_PATH_MAX = 100


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        # a path too long for a Unix socket address is reached relative to the current directory
        self.socket_path = path if len(os.fsencode(path)) <= SUN_PATH_MAX else os.path.relpath(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EventsApi:
    def __init__(self, path: str, retry_s: float) -> None:
        self.path, self.retry_s = path, retry_s

    def call(self, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        deadline = time.monotonic() + self.retry_s
        while True:
            conn = UnixHTTPConnection(self.path)
            try:
                payload = json.dumps(body).encode() if body is not None else None
                conn.request(method, url, body=payload, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                status, text = response.status, response.read()
                if status != 503:
                    return status, json.loads(text or b"null")
                why: object = f"HTTP 503 {text[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                why = exc
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"es_payload: {method} {url} failed for {self.retry_s:.0f} s: {why}")
            time.sleep(0.2)


def output_name(range_id: str) -> str:
    return "out_" + re.sub(r"[^A-Za-z0-9._-]", "_", range_id) + ".dat"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A tiny event-service payload (see its docstring).")
    parser.add_argument("--n", type=int, default=1, help="ranges asked for at a time")
    parser.add_argument("--fail-every", type=int, default=0, help="report every K-th range failed (tests)")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds of 'work' per range")
    parser.add_argument("--retry-s", type=float, default=60.0, help="how long to retry a failing call")
    args = parser.parse_args(argv)
    api = EventsApi(os.environ.get("NODEPILOT_EVENTS_SOCKET", "./events.sock"), args.retry_s)
    count = 0
    while True:
        status, reply = api.call("POST", f"/ranges?n={args.n}&request={uuid.uuid4()}")
        if status != 200:
            print(f"es_payload: no ranges: HTTP {status} {reply}", file=sys.stderr)
            return 1
        if not reply["ranges"]:
            print(f"es_payload: no more ranges after {count}")
            return 0
        for item in reply["ranges"]:
            count += 1
            range_id = item["eventRangeID"]
            started, cpu = time.monotonic(), time.process_time()
            if args.sleep:
                time.sleep(args.sleep)
            if args.fail_every and count % args.fail_every == 0:
                url = f"/ranges/{range_id}/failed"
                body: dict[str, Any] = {"diag": f"failed on purpose (every {args.fail_every}th range)"}
            else:
                n_events = int(item["lastEvent"]) - int(item["startEvent"]) + 1
                name = output_name(range_id)
                with open(name, "wb") as fh:
                    for event in range(int(item["startEvent"]), int(item["lastEvent"]) + 1):
                        fh.write(f"{range_id} {event}\n".encode())
                url = f"/ranges/{range_id}/done"
                body = {"output": name, "n_events": n_events, "wall_s": time.monotonic() - started,
                        "cpu_s": time.process_time() - cpu}
            status, answer = api.call("POST", url, body)
            if status != 200:
                print(f"es_payload: {url}: HTTP {status} {answer}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
