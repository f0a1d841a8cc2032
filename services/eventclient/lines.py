"""The line protocol: the payload's API for payloads that cannot speak HTTP (a bash script with
``echo`` and ``read``), on two FIFOs in the job's work dir, served in the eventclient's event loop.

``events.out`` (``NODEPILOT_EVENTS_OUT``): the payload writes one command per line;
``events.in`` (``NODEPILOT_EVENTS_IN``): the eventclient answers each command with one line, in order.
Commands and answers are in README.md ("The line protocol"); every command calls the same
``PayloadBackend`` as the HTTP API.

The eventclient opens both FIFOs read-write and non-blocking: it is always a reader of the
commands and a writer of the answers, so a payload may open and close either FIFO as often as it
likes (``echo cmd > $OUT; read -r answer < $IN`` per command) without the eventclient ever seeing
an end of file, a payload's open never blocks while the eventclient runs, and reading is an
asyncio reader on the descriptor (no polling). A restarted eventclient reuses the FIFOs in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.eventclient.payload import (
    MAX_RANGES_PER_CALL,
    DoneBody,
    FailedBody,
    PayloadBackend,
    Refused,
    request_id,
)

log = logging.getLogger(__name__)

IN_NAME = "events.in"  # the payload reads answers
OUT_NAME = "events.out"  # the payload writes commands
MAX_LINE = 65536
MAX_QUEUED = 1000  # commands read ahead of their answers; beyond that the reader pauses
READS_PER_TURN = 16
RANGE_WORDS = ("eventRangeID", "startEvent", "lastEvent", "LFN", "GUID", "scope")


# --- the commands -------------------------------------------------------------------------------
def _count(words: list[str], at: int, default: int) -> int:
    given = _given(words, at)
    if given is None:
        return default
    n = int(given)
    if not 1 <= n <= MAX_RANGES_PER_CALL:
        raise Refused(400, f"ask for 1 to {MAX_RANGES_PER_CALL} ranges, not {n}")
    return n


def _given(words: list[str], at: int) -> str | None:
    """An optional field: absent or ``-`` is not given."""
    return words[at] if len(words) > at and words[at] != "-" else None


def _need(words: list[str], n: int, usage: str) -> None:
    if len(words) < n:
        raise Refused(400, f"usage: {usage}")


async def _next(backend: PayloadBackend, words: list[str], _line: str) -> str:
    ranges = await backend.take(_count(words, 1, 1), request_id(_given(words, 2)))
    return json.dumps(ranges, separators=(",", ":"))


async def _range(backend: PayloadBackend, words: list[str], _line: str) -> str:
    ranges = await backend.take(1, request_id(_given(words, 1)))
    if not ranges:
        return "none"
    return " ".join(str(ranges[0].get(key, "-")).replace(" ", "_") or "-" for key in RANGE_WORDS)


async def _done(backend: PayloadBackend, words: list[str], _line: str) -> str:
    _need(words, 3, "done <range id> <output> [n_events [cpu_s [wall_s]]]")
    n_events, cpu_s, wall_s = _given(words, 3), _given(words, 4), _given(words, 5)
    body = DoneBody.parse({"output": words[2], "n_events": n_events, "cpu_s": cpu_s, "wall_s": wall_s})
    return f"ok {(await backend.done(words[1], body))['state']}"


async def _failed(backend: PayloadBackend, words: list[str], line: str) -> str:
    _need(words, 2, "failed <range id> [error_code [diag]]")
    parts = line.split(None, 3)  # the diag keeps its spaces
    body = FailedBody.parse({"error_code": _given(words, 2), "diag": parts[3] if len(parts) > 3 else None})
    return f"ok {(await backend.fail(words[1], body))['state']}"


async def _softkill(backend: PayloadBackend, _words: list[str], _line: str) -> str:
    return f"ok {(await backend.softkill())['running']}"


async def _status(backend: PayloadBackend, _words: list[str], _line: str) -> str:
    return json.dumps(backend.states(), separators=(",", ":"))


Command = Callable[[PayloadBackend, list[str], str], Awaitable[str]]
COMMANDS: dict[str, Command] = {"next": _next, "range": _range, "done": _done, "failed": _failed,
                                "softkill": _softkill, "status": _status}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:1000]


async def answer(backend: PayloadBackend, line: str) -> str | None:
    """The answer line to one command line (None for a blank line: no answer)."""
    words = line.split()
    if not words:
        return None
    command = COMMANDS.get(words[0].lower())
    try:
        if command is None:
            raise Refused(400, f"unknown command {words[0][:100]!r} (next, range, done, failed, softkill, status)")
        return await command(backend, words, line)
    except Refused as exc:
        return f"error {exc.status} {_one_line(exc.detail)}"
    except ValueError as exc:  # a number that is not one (payload.Invalid among them)
        return f"error 400 {_one_line(str(exc))}"
    except Exception as exc:  # a bug must not end the protocol for the rest of the job
        log.exception("line protocol: %r failed", line[:200])
        return f"error 500 {_one_line(repr(exc))}"


# --- the FIFOs ----------------------------------------------------------------------------------
def open_fifo(path: Path) -> int:
    """``path`` as a FIFO (one left by a crashed eventclient is kept: a payload may be using it; anything
    else there is replaced), opened read-write and non-blocking."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            path.unlink()
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o666)
        os.chmod(path, 0o666)  # like the socket: the work dir's permissions decide who reaches it
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


class LineServer:
    """The line protocol of one job: commands from ``events.out``, answers to ``events.in``."""

    def __init__(self, backend: PayloadBackend, workdir: Path) -> None:
        self.backend = backend
        self.in_path, self.out_path = workdir / IN_NAME, workdir / OUT_NAME
        self._commands = self._answers = -1
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffer = bytearray()
        self._skipping = False  # inside a line too long: dropped up to its end
        self._paused = False
        self._task: asyncio.Task[None] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What the payload's environment gets."""
        return {"NODEPILOT_EVENTS_IN": str(self.in_path), "NODEPILOT_EVENTS_OUT": str(self.out_path)}

    async def open(self) -> None:
        try:
            self._answers = open_fifo(self.in_path)
            self._commands = open_fifo(self.out_path)
        except BaseException:
            await self.close()
            raise
        asyncio.get_running_loop().add_reader(self._commands, self._readable)
        self._task = asyncio.create_task(self._serve())

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for fd in (self._commands, self._answers):
            if fd >= 0:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
                os.close(fd)
        self._commands = self._answers = -1
        for path in (self.in_path, self.out_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- reading: whole lines to the queue -----------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(READS_PER_TURN):  # bounded: a payload writing without end does not hold the loop
            try:
                chunk = os.read(self._commands, MAX_LINE)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:  # no writer at all: cannot happen while we hold the FIFO read-write
                break
            self._take(chunk)
        if self._lines.qsize() >= MAX_QUEUED and not self._paused:
            self._paused = True  # a payload that never reads its answers: stop reading it
            asyncio.get_running_loop().remove_reader(self._commands)

    def _take(self, chunk: bytes) -> None:
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            whole = bytes(self._buffer) + line
            self._buffer.clear()
            if self._skipping:
                self._skipping = False
            else:
                self._lines.put_nowait(whole if len(whole) <= MAX_LINE else None)
        if not self._skipping:
            self._buffer += rest
            if len(self._buffer) > MAX_LINE:
                self._lines.put_nowait(None)
                self._buffer.clear()
                self._skipping = True

    # --- answering, in order ---------------------------------------------------------------------------
    async def _serve(self) -> None:
        replies: list[str] = []  # answers to commands that came together go out together
        while True:
            line = await self._lines.get()
            if line is None:
                reply: str | None = f"error 400 line longer than {MAX_LINE} bytes"
            else:
                reply = await answer(self.backend, line.decode(errors="replace"))
            if reply is not None:
                replies.append(reply + "\n")
            if replies and self._lines.empty():
                await self._write("".join(replies))
                replies.clear()
            if self._paused and self._lines.empty():
                self._paused = False
                asyncio.get_running_loop().add_reader(self._commands, self._readable)

    async def _write(self, text: str) -> None:
        data = memoryview(text.encode())
        while data:
            try:
                data = data[os.write(self._answers, data):]
            except (BlockingIOError, InterruptedError):
                await self._writable()

    async def _writable(self) -> None:
        """Until the answers FIFO has room (a payload slow to read its answers)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(self._answers, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_writer(self._answers)
