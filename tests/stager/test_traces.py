"""Transfer traces from a real stager process to a real HTTP trace receiver on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodepilot.config import PilotConfig
from services.stager.traces import SENDING_KEY, SPOOL_KEY
from tests.conftest import running_service
from tests.stager.servers import free_ports
from tests.stager.test_stager_service import answer, in_file, put_on_se, send

TRACE_FIELDS = {"eventType", "eventVersion", "clientState", "stateReason", "scope", "dataset", "filename", "guid",
                "filesize", "checksum", "url", "localSite", "remoteSite", "timeStart", "transferStart", "timeEnd",
                "appid", "PandaID", "hostname", "ip", "uuid", "protocol", "attempt"}


class Receiver:
    """A trace server: records every JSON body POSTed to it; ``gate`` holds answers back while clear."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.records: list[dict] = []
        self.changed = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.gate.wait(10)
                with receiver.changed:
                    receiver.records.append(json.loads(body))
                    receiver.changed.notify_all()
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.gate.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.records) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.records)} of {count} trace records arrived: {self.records}"
                self.changed.wait(left)
            return list(self.records)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/traces/"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    (port,) = free_ports(1)
    r = Receiver(port)
    yield r
    r.stop()


def wait_drained(rds, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while rds.llen(SPOOL_KEY) + rds.llen(SENDING_KEY):
        assert time.monotonic() < deadline, "the trace spool did not drain"
        time.sleep(0.02)


def with_traces(cfg: PilotConfig, url: str) -> PilotConfig:
    cfg.queuedata.stager = {"trace_url": url, "trace_timeout_s": 2, "trace_retry_cap_s": 0.2}
    return cfg


def test_one_record_per_file_per_attempt(rds, pilot_config, receiver):
    receiver.start()
    put_on_se(pilot_config, "demo.data", "here.dat", b"here")
    with running_service("stager", with_traces(pilot_config, receiver.url)):
        send(rds, pilot_config, "stagein", 41, "41:1:stagein",
             files=[in_file("here.dat", b"here"), in_file("gone.dat", b"gone")])
        assert answer(rds, 41, "stagein")["ok"] is False
        records = receiver.wait_for(2)
        wait_drained(rds)
    by_file = {r["filename"]: r for r in records}
    assert len(records) == 2 and set(by_file) == {"here.dat", "gone.dat"}
    for record in records:
        assert set(record) >= TRACE_FIELDS, TRACE_FIELDS - set(record)
        assert record["eventType"] == "get_sm" and record["PandaID"] == record["appid"] == 41
        assert record["remoteSite"] == "LOCAL_SE" and record["localSite"] == "LOCAL_TEST"
        assert record["timeStart"] <= record["transferStart"] <= record["timeEnd"]
        assert record["url"].startswith("file:///") and record["protocol"] == "file" and record["attempt"] == 1
    done, missing = by_file["here.dat"], by_file["gone.dat"]
    assert done["clientState"] == "DONE" and done["stateReason"] == "OK" and done["filesize"] == 4
    assert done["checksum"] == in_file("here.dat", b"here")["checksum"] and done["guid"] == "g-here.dat"
    assert missing["clientState"] == "NO_REPLICA" and "missing on the SE" in missing["stateReason"]
    assert len({r["uuid"] for r in records}) == 2


def test_records_wait_in_redis_while_the_trace_server_is_down(rds, pilot_config, receiver):
    files = {f"f{i}.dat": f"data {i}".encode() for i in range(3)}
    for lfn, data in files.items():
        put_on_se(pilot_config, "demo.data", lfn, data)
    with running_service("stager", with_traces(pilot_config, receiver.url)):  # nothing listens there yet
        started = time.monotonic()
        send(rds, pilot_config, "stagein", 42, "42:1:stagein", files=[in_file(k, v) for k, v in files.items()])
        assert answer(rds, 42, "stagein")["ok"] is True
        assert time.monotonic() - started < 3
        deadline = time.monotonic() + 5
        while rds.llen(SPOOL_KEY) + rds.llen(SENDING_KEY) < 3:
            assert time.monotonic() < deadline, "the records were not spooled"
            time.sleep(0.02)
        assert receiver.records == []
        receiver.start()  # the server comes back: the spool drains
        records = receiver.wait_for(3)
        wait_drained(rds)
    assert sorted(r["filename"] for r in records) == sorted(files)
    assert all(r["clientState"] == "DONE" for r in records)


def test_a_hanging_trace_server_never_holds_a_transfer_back(rds, pilot_config, receiver):
    receiver.gate.clear()  # accepts connections, answers nothing until the gate opens
    receiver.start()
    put_on_se(pilot_config, "demo.data", "x.dat", b"x")
    put_on_se(pilot_config, "demo.data", "y.dat", b"y")
    with running_service("stager", with_traces(pilot_config, receiver.url)):
        started = time.monotonic()
        send(rds, pilot_config, "stagein", 43, "43:1:stagein", files=[in_file("x.dat", b"x")])
        assert answer(rds, 43, "stagein")["ok"] is True
        send(rds, pilot_config, "stagein", 44, "44:1:stagein", files=[in_file("y.dat", b"y")])
        assert answer(rds, 44, "stagein")["ok"] is True
        assert time.monotonic() - started < 1.5  # the trace POST is stuck for up to 2 s meanwhile
        receiver.gate.set()
        records = receiver.wait_for(2)
    assert sorted({r["filename"] for r in records}) == ["x.dat", "y.dat"]  # at least once


def test_a_stager_asked_to_retire_sends_its_traces_first(rds, pilot_config, receiver):
    """It runs only while it is needed (nodepilot/demand.py): its records are delivered before it ends."""
    receiver.gate.clear()  # the record's POST waits until the gate opens
    receiver.start()
    put_on_se(pilot_config, "demo.data", "z.dat", b"z")
    with running_service("stager", with_traces(pilot_config, receiver.url)) as proc:
        send(rds, pilot_config, "stagein", 45, "45:1:stagein", files=[in_file("z.dat", b"z")])
        assert answer(rds, 45, "stagein")["ok"] is True
        proc.send_signal(signal.SIGUSR2)  # the launcher's word: retire
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)  # a record is being sent: it waits
        receiver.gate.set()
        assert proc.wait(10) == 0
        assert [r["filename"] for r in receiver.wait_for(1)] == ["z.dat"]
        assert rds.llen(SPOOL_KEY) + rds.llen(SENDING_KEY) == 0


def test_a_stager_asked_to_retire_leaves_traces_the_server_does_not_take(rds, pilot_config, receiver):
    put_on_se(pilot_config, "demo.data", "w.dat", b"w")
    with running_service("stager", with_traces(pilot_config, receiver.url)) as proc:  # nothing listens there
        send(rds, pilot_config, "stagein", 46, "46:1:stagein", files=[in_file("w.dat", b"w")])
        assert answer(rds, 46, "stagein")["ok"] is True
        proc.send_signal(signal.SIGUSR2)
        assert proc.wait(10) == 0  # it does not wait for a trace server that is down
    assert rds.llen(SPOOL_KEY) + rds.llen(SENDING_KEY) == 1  # kept for the next stager
