"""The ``nodepilot`` command: for ``start`` and ``run``, its command line is read by a forked child while this
process, which becomes the pilot, imports what the pilot runs.

Reading the command line takes typer, which builds a pydantic validator for every option, and reading the
queue data may take pydantic's models: about 15 MB and 150 ms that nothing needs once they are read. The child
does both (nodepilot/cli.py) and hands the result over through a pipe: the pilot's arguments (RUN/pilot.json
and its flags: nodepilot/boot.py) and the environment the command set (log format and level, X.509 paths...),
as an exec would pass them. Meanwhile this process imports what the pilot runs first
(``boot.preload``). It runs the pilot from the answer, or, when the child ends without one (``--help``, a bad
option, a queue it cannot use: said by the child, in one line), ends with the child's exit code. So the pilot
keeps the process id it was launched with, and no pilot process ever imports typer or pydantic.

Every other command runs typer in this process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

COMMANDS_APART = ("start", "run")  # the commands that become the pilot
LAUNCHED_AT = "NODEPILOT_LAUNCHED_AT"


def main() -> None:
    """The entry of ``nodepilot`` (and ``python -m nodepilot``)."""
    if sys.argv[1:2] and sys.argv[1] in COMMANDS_APART:
        sys.exit(run_apart())
    from nodepilot.cli import main as cli_main

    cli_main()


def run_apart() -> int:
    """Read the command line in a child, import the pilot meanwhile, then run it: the exit code."""
    # the start-up's clock (the slot's time budget and time floor count from it): this launch's, never one
    # inherited from whatever started this command
    os.environ[LAUNCHED_AT] = str(time.time())
    gc.disable()  # no cyclic collections while the start-up loads its modules (the launcher enables them)
    from nodepilot import boot  # (and the settings' modules: imported once, for both processes)

    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered here is written twice
    read_end, write_end = os.pipe()
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C while reading: the child says "Aborted!"
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, interrupt)
        os.close(read_end)
        _read_command_line(write_end)
    os.close(write_end)
    try:
        boot.preload(in_process=boot.IN_PROCESS in sys.argv)
        with os.fdopen(read_end) as pipe:
            raw = pipe.read()
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGINT, interrupt)
    answer = _answer_of(raw)
    if answer is None:  # the command ended in the child: its exit code (128 + N for signal N, as a shell says it)
        code = os.waitstatus_to_exitcode(status)
        if raw and code == 0:  # cut short (the child cannot have meant it)
            print("nodepilot: the command line's reader ended with half an answer", file=sys.stderr)
            code = 1
        return code if code >= 0 else 128 - code
    os.environ.clear()  # the environment the command set, as an exec would have passed it
    os.environ.update(answer["env"])
    return boot.main(answer["argv"])


def _read_command_line(write_end: int) -> NoReturn:
    """The child: typer reads the command line; the pilot's arguments go to the parent (nodepilot/boot.py
    ``hand_over``), or nothing when the command ends here. Never returns."""
    code = 1
    try:
        from nodepilot import boot, proc

        boot.ANSWER_FD = write_end
        proc.PILOT_PID = os.getppid()
        from nodepilot.cli import main as cli_main

        cli_main()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # a bug: said as Python would say it
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):
                stream.flush()
        os._exit(code)


def _answer_of(raw: str) -> dict[str, Any] | None:
    """The child's whole answer, or None (no answer, or one cut short)."""
    try:
        answer = json.loads(raw) if raw else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and "argv" in answer and "env" in answer else None


def _exit_code(code: object) -> int:
    """``sys.exit``'s argument as the process's exit code (a message is printed, as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1

