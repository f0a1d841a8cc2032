"""The pilot's own process: what ``nodepilot start`` and ``nodepilot run`` become once their command line and
queue data are read.

The command line is parsed by typer, which builds a pydantic validator for every option, and the queue data
is checked by pydantic models; that memory, and the heap the parsing leaves fragmented, would stay in the
pilot for its whole life and be inherited by every service it forks (about 6 MB of anonymous memory and 4 MB
of libraries). So they are read by a forked child while this process imports what the pilot runs
(nodepilot/entry.py), and the child hands the pilot's arguments over (``hand_over``). Started another way
(``nodepilot.cli`` called directly), the command replaces itself (``exec``: the same process id, the same open
terminal) with ``python -m nodepilot.boot RUN/pilot.json``. Either way this module then checks the experiment
and runs the preflight, holds the run dir, starts the launcher or the in-process services, shows progress on a
terminal and prints the closing summary.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from nodepilot import exitcodes
from nodepilot.config import PilotConfig

IN_PROCESS = "--in-process"
PREFLIGHT = "--preflight"  # nodepilot start: the checks run before any job is asked for
JOB_FAILED_CODE = "--job-failed-code"  # nodepilot run: exit 8 when the pilot ended well but its job failed
PRELOAD = ("asyncio", "psutil", "redis.asyncio")  # see preload()
PILOT_MODULES = ("nodepilot.launcher", "nodepilot.experiments", "nodepilot.panda.harvester_mode",
                 "nodepilot.queue.preflight", "nodepilot.rundir", "nodepilot.banner")  # what main() imports next
ANSWER_FD: int | None = None  # set in the child reading the command line: where the pilot's arguments go


def progress_wanted() -> bool:
    """Progress lines on a terminal, for people (not with JSON logs, meant for a collector)."""
    return sys.stdout.isatty() and os.environ.get("NODEPILOT_LOG_FORMAT", "plain") == "plain"


def hand_over(config: PilotConfig, in_process: bool, preflight: bool, job_failed_code: bool) -> NoReturn:
    """The command line read: its pilot runs in the waiting parent, or in this process's place (see the
    module's docstring); never returns."""
    if ANSWER_FD is None:  # started without nodepilot.entry (which set it at launch): the clock starts here
        os.environ["NODEPILOT_LAUNCHED_AT"] = str(time.time())
    argv = [str(config.save())]
    argv += [IN_PROCESS] * in_process + [PREFLIGHT] * preflight + [JOB_FAILED_CODE] * job_failed_code
    if ANSWER_FD is not None:
        answer(ANSWER_FD, argv)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "nodepilot.boot", *argv])


def answer(write_end: int, argv: list[str]) -> NoReturn:
    """The child's answer: the pilot's arguments and the environment; never returns."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    code = 1  # not all of it was written: the parent says so
    try:
        with os.fdopen(write_end, "w") as out:
            json.dump({"argv": argv, "env": dict(os.environ)}, out)
        code = 0
    finally:
        os._exit(code)


def run_pilot(config: PilotConfig, in_process: bool) -> int:
    """Hold the run dir, run the pilot, print its summary: the pilot's exit code."""
    from nodepilot.banner import banner
    from nodepilot.rundir import RunDirBusy, lock_run_dir

    logger = logging.getLogger("nodepilot")
    try:  # one pilot per run dir, emptied but for summary.json at exit
        run_lock = lock_run_dir(Path(config.run_dir))
    except (RunDirBusy, OSError) as exc:
        logger.error("%s", exc)
        return exitcodes.USAGE
    first_line = banner(config, "in-process" if in_process else "services as processes")
    progress = None
    if progress_wanted():  # INFO lines are hidden on a terminal
        print(first_line, file=sys.stderr, flush=True)
        from nodepilot.progress import JobProgress

        progress = JobProgress(Path(config.run_dir))
        progress.start()
    else:
        logger.info("%s", first_line)
    try:
        if in_process:
            from nodepilot.inprocess import run_in_process

            gc.enable()
            code = run_in_process(config)
        else:
            from nodepilot.launcher import Launcher

            code = Launcher(config).run()
    finally:
        if progress is not None:
            progress.stop()
        run_lock.release()
    from nodepilot.summary import print_summary  # rich: imported once the services are gone, not forked with them

    print_summary(Path(config.run_dir) / "summary.json")
    return code


def prepare(config: PilotConfig, preflight: bool) -> int:
    """The queue data (read with the command line) completed and its experiment loaded, and for ``start`` the
    preflight: an exit code."""
    from nodepilot import experiments
    from nodepilot.panda.harvester_mode import access_point_storage
    from nodepilot.queue.preflight import PreflightError, run_preflight

    logger = logging.getLogger("nodepilot")
    try:
        if config.harvester_dir:  # push mode: Harvester's stager takes the files from the access point
            access_point_storage(config.queuedata, Path(config.harvester_dir))
        if config.stageout_attempts:
            config.queuedata.stager["attempts"] = config.stageout_attempts
        experiments.load(experiments.name_for(config.pilot_user, config.queuedata.pilot_user))
        if preflight:
            run_preflight(config)
    except experiments.UnknownExperiment as exc:
        logger.error("%s", exc)
        return exitcodes.USAGE
    except PreflightError as exc:
        logger.error("%s", exc)
        return exc.code
    except (OSError, ValueError) as exc:
        logger.error("queue data: %s", exc)
        return exitcodes.USAGE
    return exitcodes.OK


def preload(in_process: bool) -> None:
    """What the pilot runs, imported while the command line is read (nodepilot/entry.py), so that reading it costs
    the start-up nothing. With services as processes: the launcher, the monitor and what they use first (about
    25 MB); the other services import their own modules once forked (nodepilot/launcher.py). With
    ``--in-process``, only the libraries every service is built on (about 13 MB): the reader holds about 15 MB of
    its own (typer, pydantic) until it answers, and the two side by side must stay under what the running pilot
    holds (44 MB, sampled every 5 ms)."""
    for name in PRELOAD:
        importlib.import_module(name)
    if in_process:
        return
    for name in PILOT_MODULES:
        importlib.import_module(name)
    from nodepilot import registry, service

    registry.service_class("monitor")
    service.import_first_use_modules()


def main(argv: list[str]) -> int:
    gc.disable()  # no cyclic collections while the start-up loads its modules (the launcher enables them)
    from nodepilot.logs import setup_logging

    setup_logging("launcher")
    try:
        config = PilotConfig.load(argv[0])
    except (IndexError, OSError, ValueError, TypeError) as exc:
        logging.getLogger("nodepilot").error("nodepilot.boot: no readable pilot.json given (%s)", exc)
        return exitcodes.USAGE
    code = prepare(config, PREFLIGHT in argv)  # the services are imported by the launcher, Redis starting meanwhile
    if code != exitcodes.OK:
        return code
    code = run_pilot(config, IN_PROCESS in argv)
    if JOB_FAILED_CODE in argv and code == exitcodes.OK:
        from nodepilot.summary import any_failed

        if any_failed(Path(config.run_dir) / "summary.json"):
            return exitcodes.JOB_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
