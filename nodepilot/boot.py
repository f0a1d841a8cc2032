"""The pilot's own process: what ``nodepilot start`` and ``nodepilot run`` become once their command line is
read.

The command line is parsed by typer, which builds a pydantic validator for every option; that memory, and the
heap the parsing leaves fragmented, would stay in the pilot for its whole life and be inherited by every
service it forks (about 6 MB of anonymous memory and 4 MB of libraries). So the command replaces itself
(``exec``: the same process id, the same open terminal) with ``python -m nodepilot.boot RUN/pilot.json``. That
process has a forked child read the queue data (nodepilot/queue/apart.py) while it imports only what the
pilot runs, checks the queue data and runs the preflight, holds the run dir, starts the launcher or the
in-process services, shows progress on a terminal and prints the closing summary.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from nodepilot import exitcodes
from nodepilot.config import PilotConfig
from nodepilot.queue.apart import QueueReader

IN_PROCESS = "--in-process"
PREFLIGHT = "--preflight"  # nodepilot start: the checks run before any job is asked for
JOB_FAILED_CODE = "--job-failed-code"  # nodepilot run: exit 8 when the pilot ended well but its job failed


def progress_wanted() -> bool:
    """Progress lines on a terminal, for people (not with JSON logs, meant for a collector)."""
    return sys.stdout.isatty() and os.environ.get("NODEPILOT_LOG_FORMAT", "plain") == "plain"


def exec_pilot(config: PilotConfig, in_process: bool, preflight: bool, job_failed_code: bool) -> NoReturn:
    """Become the pilot's own process (see the module's docstring); never returns."""
    os.environ.setdefault("NODEPILOT_LAUNCHED_AT", str(time.time()))  # the start-up's clock starts here
    path = config.save()
    argv = [sys.executable, "-m", "nodepilot.boot", str(path)]
    argv += [IN_PROCESS] * in_process + [PREFLIGHT] * preflight + [JOB_FAILED_CODE] * job_failed_code
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, argv)


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


def prepare(config: PilotConfig, reader: QueueReader, preflight: bool) -> int:
    """The queue data (being read by ``reader``) checked, and for ``start`` the preflight: an exit code."""
    from nodepilot import experiments
    from nodepilot.panda.harvester_mode import access_point_storage
    from nodepilot.queue.preflight import PreflightError, run_preflight

    logger = logging.getLogger("nodepilot")
    try:
        config.queuedata = reader.result()
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


def import_pilot(in_process: bool) -> None:
    """What the pilot runs, imported while the queue data is read (the start-up's longest steps, side by side)."""
    from nodepilot.config import SERVICES
    from nodepilot.registry import service_class

    importlib.import_module("nodepilot.inprocess" if in_process else "nodepilot.launcher")
    for name in SERVICES:
        service_class(name)


def main(argv: list[str]) -> int:
    gc.disable()  # no cyclic collections while the start-up loads its modules (the launcher enables them)
    from nodepilot.logs import setup_logging

    setup_logging("launcher")
    try:
        config = PilotConfig.load(argv[0])
    except (IndexError, OSError, ValueError, TypeError) as exc:
        logging.getLogger("nodepilot").error("nodepilot.boot: no readable pilot.json given (%s)", exc)
        return exitcodes.USAGE
    reader = QueueReader(config)
    import_pilot(IN_PROCESS in argv)
    code = prepare(config, reader, PREFLIGHT in argv)
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
