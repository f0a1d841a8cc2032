"""The commands beside the pilot itself: ``nodepilot service`` (one service in the foreground),
``nodepilot summary`` (the jobs table of a finished pilot), ``nodepilot status`` (a live view), and
the log-format option they share with the others. Bad input gets one line and exit code 2, never a traceback."""

import os
from pathlib import Path
from typing import Annotated

import typer

from nodepilot import exitcodes
from nodepilot.config import PilotConfig

LogFormatOpt = Annotated[str, typer.Option("--log-format", envvar="NODEPILOT_LOG_FORMAT",
                                           help="plain (for people) | json (one object per line)")]


def set_log_format(given: str) -> None:
    """The services inherit the launcher's environment: the format chosen here is theirs too."""
    from nodepilot.logs import FORMAT_ENV, log_format

    try:
        os.environ[FORMAT_ENV] = log_format(given)
    except ValueError as exc:
        typer.echo(f"nodepilot: {exc}", err=True)
        raise typer.Exit(exitcodes.USAGE) from None


def refuse(command: str, message: str) -> typer.Exit:
    """One line on stderr; the exit (usage) to raise."""
    typer.echo(f"nodepilot {command}: {message}", err=True)
    return typer.Exit(exitcodes.USAGE)


def service_settings(config: Path | None) -> PilotConfig:
    """The settings of ``nodepilot service``: a pilot.json, else NODEPILOT_* variables; ValueError if neither."""
    if config is not None:
        try:
            return PilotConfig.load(config)
        except (OSError, ValueError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ValueError(f"cannot read the configuration {config}: {why}") from None
    settings = PilotConfig.from_env()
    if not settings.redis_url:
        raise ValueError("no configuration: give --config RUN/pilot.json, or NODEPILOT_* variables "
                         "(NODEPILOT_REDIS_URL at least)")
    from nodepilot.queue.loader import load as load_queue  # compose: the queue from the environment's sources

    settings.queuedata = load_queue(settings)
    return settings


def service(
    name: Annotated[str, typer.Argument(help="monitor | runner | stager | eventclient")],
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="NODEPILOT_CONFIG",
                                                help="pilot.json (default: NODEPILOT_* variables)")] = None,
    log_format: LogFormatOpt = "plain",
) -> None:
    """Run one service in the foreground (what compose starts; the launcher forks the same code)."""
    set_log_format(log_format)
    from nodepilot import service as service_mod
    from nodepilot.registry import service_class

    try:
        cls = service_class(name)
        settings = service_settings(config)
    except (OSError, ValueError) as exc:
        raise refuse("service", str(exc)) from None
    raise typer.Exit(service_mod.run(cls, settings))


def summary(path: Annotated[Path, typer.Argument(help="a run directory's summary.json")]) -> None:
    """Print the table of jobs a pilot ran."""
    from nodepilot.summary import load_summary, print_table

    try:
        results = load_summary(path)
    except ValueError as exc:
        raise refuse("summary", str(exc)) from None
    print_table(results)


def status(
    run_dir: Annotated[str, typer.Option("--run-dir", envvar="NODEPILOT_RUN_DIR",
                                         help="the pilot's run directory (default: newest under --workdir)")] = "",
    workdir: Annotated[Path, typer.Option("--workdir", "-a", envvar="NODEPILOT_WORK_DIR",
                                          help="work directory")] = Path("."),
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between frames")] = 1.0,
) -> None:
    """A live view of a running pilot: jobs, transfers, event ranges, watchdog checks."""
    from nodepilot.status import find_run_dir, show

    where = Path(run_dir) if run_dir else find_run_dir(workdir)
    if where is None:
        typer.echo(f"nodepilot status: no running pilot under {workdir.resolve()} (give --run-dir)", err=True)
        raise typer.Exit(1)
    raise typer.Exit(show(where, once, max(interval, 0.2)))
