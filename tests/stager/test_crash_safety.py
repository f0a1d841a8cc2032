"""A stager SIGKILLed mid-transfer and restarted finishes the request, once, and never shows a partial file.

The replica is a named pipe on the posix SE: the transfer goes exactly as fast as the test writes into
it, so "mid-transfer" is a known state, not a race.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from nodepilot import bus
from nodepilot.http import uds_client
from tests.conftest import running_service
from tests.stager.test_stager_service import answer, in_file, se_file, send, workdir
from tests.waiting import wait_until

MIB = 1 << 20
DATA = os.urandom(3 * MIB + 777)
JOB = 71


def open_writer(fifo: Path, timeout: float = 10.0) -> int:
    """The pipe's write end, once the stager has opened its read end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]



def in_flight(cfg) -> list[dict]:
    with uds_client(cfg.socket_path("stager")) as client:
        return client.get("/status").json()["transfers"]


def test_killed_mid_transfer_then_restarted_finishes_once(rds, pilot_config):
    fifo = se_file(pilot_config, "demo.data", "big.dat")
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    entry = {**in_file("big.dat", DATA), "fsize": None}  # a pipe has no size to check beforehand
    wd = workdir(pilot_config, JOB)
    with running_service("stager", pilot_config) as first:
        send(rds, pilot_config, "stagein", JOB, f"{JOB}:1:stagein", files=[entry])
        writer = open_writer(fifo)
        write_all(writer, DATA[: 2 * MIB + 100])  # the rest waits for more
        live = wait_until(lambda: [t for t in in_flight(pilot_config) if t["bytes_done"] >= 2 * MIB],
                          what="transfer at 2 MiB")[0]
        assert live["lfn"] == "big.dat" and live["direction"] == "in" and 2 * MIB <= live["bytes_done"] < len(DATA)
        assert live["rate_bytes_s"] > 0 and live["endpoint"] == "LOCAL_SE" and live["attempt"] == 1
        partial = wait_until(lambda: list(wd.glob(".nodepilot-*.part")), what="partial file")
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait(10)
        os.close(writer)
    assert not (wd / "big.dat").exists()  # the partial copy never had the final name
    assert partial[0].exists()
    assert rds.xpending(bus.STAGER_REQUESTS, "stager")["pending"] == 1

    with running_service("stager", pilot_config):
        writer = open_writer(fifo)  # the new instance took the pending request and opened the pipe again
        write_all(writer, DATA)
        os.close(writer)
        event = answer(rds, JOB, "stagein")
        wait_until(lambda: rds.xpending(bus.STAGER_REQUESTS, "stager")["pending"] == 0, what="acknowledgement")
    assert event["ok"] is True, event
    assert (wd / "big.dat").read_bytes() == DATA
    assert sorted(p.name for p in wd.iterdir()) == ["big.dat"]  # the killed copy's partial file is gone
    types = [bus.decode(fields)["type"] for _id, fields in rds.xrange(bus.job_events(JOB))]
    assert types == ["stagein_done"]
