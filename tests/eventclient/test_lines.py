"""The line protocol on the job's FIFOs: the real eventclient and stager as processes, the test (or
examples/es_payload.sh) as the payload. The source is a ranges file."""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

import pytest

from nodepilot.errors import ErrorCode
from nodepilot.http import uds_client
from tests.conftest import running_service
from tests.eventclient.helpers import (
    JOB,
    N_RANGES,
    assert_reported_once,
    begin,
    end,
    ids,
    reports,
    run_bash_payload,
    se_file,
    wait_event,
    workdir,
)


def read_answers(fd: int, n: int, timeout: float = 10.0) -> list[str]:
    """``n`` answer lines from the answers FIFO, read a byte at a time (as bash's read does)."""
    lines, current = [], b""
    deadline = time.monotonic() + timeout
    while len(lines) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no answer within {timeout} s (got {lines})"
        if not select.select([fd], [], [], remaining)[0]:
            continue
        byte = os.read(fd, 1)
        assert byte, "the answers FIFO was closed"
        if byte == b"\n":
            lines.append(current.decode())
            current = b""
        else:
            current += byte
    return lines


def ask(wd: Path, *commands: str, answers: int | None = None) -> list[str]:
    """Open both FIFOs, send the commands, read their answers, close both: what a bash payload
    that runs ``echo cmd > $OUT; read -r answer < $IN`` per command does."""
    os.close(os.open(wd / "events.out", os.O_WRONLY | os.O_NONBLOCK))  # ENXIO at once if nobody reads it
    with open(wd / "events.out", "wb") as out:
        out.write("".join(f"{c}\n" for c in commands).encode())
    fd = os.open(wd / "events.in", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return read_answers(fd, len(commands) if answers is None else answers)
    finally:
        os.close(fd)


def test_bash_payload_through_the_line_protocol(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        ready = begin(rds, pilot_config, files)
        proc = run_bash_payload(ready["env"], wd, "--fail-every", "5")
        assert proc.returncode == 0, proc.stderr
        assert f"no more ranges after {N_RANGES}" in proc.stdout
        done = end(rds)
    every_fifth = {i for i in range(N_RANGES) if (i + 1) % 5 == 0}
    assert (done["finished"], done["failed"], done["error_code"]) == (40, 10, 0)
    assert done["n_events"] == 40 * 10
    assert_reported_once(files[1], ids(*(set(range(N_RANGES)) - every_fifth)),
                         dict.fromkeys(ids(*every_fifth), ErrorCode.ES_RECOVERABLE))
    for rid, items in reports(files[1]).items():
        if items[0]["status"] == "finished":
            lfn = items[0]["zip"]["lfn"]
            assert se_file(pilot_config, lfn).read_text().splitlines()[0] == f"{rid} {int(rid.split('-')[3]) * 10 + 1}"
    assert not any((wd / name).exists() for name in ("events.in", "events.out", "events.sock"))


def test_commands_and_their_answers(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config):
        ready = begin(rds, pilot_config, files)
        first, second = json.loads(ask(wd, "next 2")[0])
        assert [first["eventRangeID"], second["eventRangeID"]] == sorted(ids(0, 1))
        (words,) = ask(wd, "range")
        rid, start_event, last_event, lfn, _guid, scope = words.split()
        assert (rid, start_event, last_event, lfn, scope) == (min(ids(2)), "21", "30", "EVNT.pool.root", "demo.data")
        (wd / "a.dat").write_bytes(b"a" * 100)
        assert ask(wd, f"done {first['eventRangeID']} a.dat 10 1.5 2.5") == ["ok done"]
        assert ask(wd, f"done {first['eventRangeID']} a.dat") == ["ok done"]  # twice: the same answer
        assert ask(wd, f"failed {second['eventRangeID']} 1305 bad  input here") == ["ok failed"]
        errors = ask(wd, "next 0", "next many", "done nosuch x.dat", f"done {rid} ../x", f"done {rid} missing.dat",
                     "done", f"failed {second['eventRangeID']}", f"done {rid} a.dat 1 fast", "hello world")
        assert [e.split()[:2] for e in errors] == [["error", "400"], ["error", "400"], ["error", "404"],
                                                   ["error", "400"], ["error", "400"], ["error", "400"],
                                                   ["error", "409"], ["error", "400"], ["error", "400"]]
        assert "usage: done" in errors[5] and "unknown command" in errors[8]
        assert ask(wd, "", "   ", "status", answers=1)[0].startswith("{")  # blank lines get no answer
        assert ask(wd, "x" * 70_000, "range")[0] == "error 400 line longer than 65536 bytes"  # and range 3 taken
        # a payload that keeps both FIFOs open for the whole job works as well as one that reopens them
        out = os.open(wd / "events.out", os.O_WRONLY)
        answers = os.open(wd / "events.in", os.O_RDONLY | os.O_NONBLOCK)
        try:
            taken = []
            for _ in range(3):
                os.write(out, b"next 1\n")
                taken += json.loads(read_answers(answers, 1)[0])
            status = json.loads((os.write(out, b"status\n"), read_answers(answers, 1))[1][0])
            os.write(out, b"softkill\nnext 5\nrange\n")
            assert read_answers(answers, 3) == ["ok 5", "[]", "none"]  # 2 + 3 running; none handed out any more
        finally:
            os.close(out)
            os.close(answers)
        assert status["counts"]["running"] == 5
        assert status["ranges"][first["eventRangeID"]] in ("done", "staged", "reported_finished")
        with uds_client(ready["socket"]) as api:  # the same session behind both front-ends
            assert api.get("/ranges").json()["softkill"] is True
        done = end(rds)
    assert (done["finished"], done["failed"], done["n_ranges"]) == (1, 19, 20)
    seen = reports(files[1])
    assert seen[second["eventRangeID"]] == [{"status": "failed", "errorCode": 1305}]
    assert seen[first["eventRangeID"]][0]["zip"]["lfn"] == "a.dat"


def test_the_fifos_outlive_a_killed_eventclient(rds, pilot_config, stager, files):
    wd = workdir(pilot_config, JOB)
    with running_service("eventclient", pilot_config) as eventclient:
        begin(rds, pilot_config, files)
        (taken,) = json.loads(ask(wd, "next 1")[0])
        held = os.open(wd / "events.out", os.O_WRONLY)  # a payload that keeps its end open
        eventclient.kill()
        eventclient.wait(10)
    try:  # nobody reads the commands now: a write fails at once, a (blocking) open would wait
        with pytest.raises(BrokenPipeError):
            os.write(held, b"status\n")
        with pytest.raises(OSError, match="No such device"):
            os.open(wd / "events.out", os.O_WRONLY | os.O_NONBLOCK)
    finally:
        os.close(held)
    assert (wd / "events.out").is_fifo() and (wd / "events.in").is_fifo()  # kept for the next instance
    (wd / "a.dat").write_bytes(b"a")
    last = rds.xrevrange(f"job:{JOB}:events", count=1)[0][0]
    with running_service("eventclient", pilot_config):  # the pending start again: the same FIFOs
        wait_event(rds, JOB, "es_ready", f"{JOB}:0:es-start", after=last)
        assert ask(wd, f"done {taken['eventRangeID']} a.dat") == ["ok done"]
        done = end(rds)
    assert (done["finished"], done["failed"]) == (1, 9)
