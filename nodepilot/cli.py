"""The ``nodepilot`` command."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from nodepilot import exitcodes
from nodepilot.config import PilotConfig, load_queuedata

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="nodepilot: a worker-node pilot for PanDA-style distributed computing.")

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/monitor.sock"


def _run_dir(work_dir: Path, given: str) -> str:
    if given:
        return str(Path(given).resolve())
    candidate = work_dir.resolve() / f"run-{os.getpid()}"
    if len(str(candidate / "eventclient.sock")) <= SOCKET_PATH_MAX:
        return str(candidate)
    return tempfile.mkdtemp(prefix="nodepilot-")  # a deep work dir: sockets must stay short


def _launch(config: PilotConfig) -> int:
    from nodepilot.launcher import Launcher
    from nodepilot.service import setup_logging
    from nodepilot.summary import print_summary

    setup_logging("launcher")
    try:
        config.queuedata = load_queuedata(config)
    except (OSError, ValueError) as exc:
        logging.getLogger("nodepilot").error("queue data: %s", exc)
        return exitcodes.USAGE
    code = Launcher(config).run()
    print_summary(Path(config.run_dir) / "summary.json")
    return code


QueueOpt = Annotated[str, typer.Option("--queue", "-q", envvar="NODEPILOT_QUEUE", help="PanDA queue")]
WorkDirOpt = Annotated[Path, typer.Option("--workdir", "-a", envvar="NODEPILOT_WORK_DIR",
                                          help="where job directories go")]
SeDirOpt = Annotated[Path, typer.Option("--se-dir", envvar="NODEPILOT_SE_DIR",
                                        help="local SE directory of the built-in default queue")]
QueueDataOpt = Annotated[str, typer.Option("--queuedata", envvar="NODEPILOT_QUEUEDATA_FILE",
                                           help="queue data JSON file (default: a built-in local queue)")]
RedisOpt = Annotated[str, typer.Option("--redis-url", envvar="NODEPILOT_REDIS_URL",
                                       help="use this Redis instead of an embedded one")]
RunDirOpt = Annotated[str, typer.Option("--run-dir", envvar="NODEPILOT_RUN_DIR",
                                        help="sockets and state (default <workdir>/run-<pid>)")]


@app.command()
def start(
    queue: QueueOpt = "LOCAL_TEST",
    server: Annotated[str, typer.Option("--server", envvar="NODEPILOT_SERVER", help="PanDA server URL")] = "",
    url: Annotated[str, typer.Option("--url", help="server URL (wrapper option; with --port)")] = "",
    port: Annotated[int, typer.Option("--port", "-p", help="server port (wrapper option)")] = 0,
    site: Annotated[str, typer.Option("--site", "-s", envvar="NODEPILOT_SITE", help="site name")] = "",
    resource: Annotated[str, typer.Option("--resource", "-r", help="resource type, e.g. SCORE")] = "",
    job_label: Annotated[str, typer.Option("--job-label", "-j", help="prodSourceLabel")] = "managed",
    pilot_user: Annotated[str, typer.Option("--pilot-user", help="experiment plug-in")] = "generic",
    workflow: Annotated[str, typer.Option("--workflow", "-w", help="generic | standalone")] = "generic",
    lifetime: Annotated[float, typer.Option("--lifetime", "-l", help="slot lifetime, s")] = 0.0,
    api: Annotated[str, typer.Option("--api", envvar="NODEPILOT_API", help="v1 | legacy")] = "v1",
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="heartbeat period, s")] = 1800.0,
    max_jobs: Annotated[int, typer.Option("--max-jobs", help="stop after this many jobs (0: no limit)")] = 0,
    workdir: WorkDirOpt = Path("."),
    se_dir: SeDirOpt = Path("se"),
    queuedata: QueueDataOpt = "",
    redis_url: RedisOpt = "",
    run_dir: RunDirOpt = "",
) -> None:
    """Run jobs from a PanDA server until it has none or the slot's time is up."""
    if url:
        server = url if not port else f"{url.rstrip('/')}:{port}"
    if not server:
        typer.echo("nodepilot start: --server (or --url) is required", err=True)
        raise typer.Exit(exitcodes.USAGE)
    del pilot_user, workflow  # accepted for wrapper compatibility; plug-ins come with issue 9
    config = PilotConfig(queue=queue, site=site or queue, server=server, api=api, job_label=job_label,
                         resource_type=resource, work_dir=str(workdir.resolve()),
                         run_dir=_run_dir(workdir, run_dir), redis_url=redis_url, se_dir=str(se_dir),
                         queuedata_file=queuedata, heartbeat_s=heartbeat, lifetime_s=lifetime,
                         max_jobs=max_jobs)
    raise typer.Exit(_launch(config))


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="a job definition (JSON)", exists=True, dir_okay=False)],
    ranges: Annotated[Path | None, typer.Option("--ranges", exists=True, dir_okay=False,
                                                help="event ranges (JSON list) of an event-service job")] = None,
    queue: QueueOpt = "LOCAL_TEST",
    workdir: WorkDirOpt = Path("."),
    se_dir: SeDirOpt = Path("se"),
    queuedata: QueueDataOpt = "",
    redis_url: RedisOpt = "",
    run_dir: RunDirOpt = "",
) -> None:
    """Run one job from a file with no server; updates go to <workdir>/updates.jsonl."""
    work = workdir.resolve()
    config = PilotConfig(queue=queue, site=queue, work_dir=str(work), run_dir=_run_dir(workdir, run_dir),
                         redis_url=redis_url, se_dir=str(se_dir), queuedata_file=queuedata, max_jobs=1,
                         job_file=str(job_file.resolve()), updates_file=str(work / "updates.jsonl"),
                         ranges_file=str(ranges.resolve()) if ranges else "")
    raise typer.Exit(_launch(config))


@app.command()
def serve(
    jobs: Annotated[Path, typer.Option("--jobs", help="directory of job definitions (*.json)")] = Path("jobs"),
    host: Annotated[str, typer.Option("--host", help="loopback by default")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="0: pick a free port")] = 0,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file of received updates")] = None,
    port_file: Annotated[Path | None, typer.Option("--port-file", help="write the port here")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="HTTPS; clients need a certificate or a token")] = False,
    cert: Annotated[Path | None, typer.Option("--cert", help="server certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="server key (PEM)")] = None,
    ca: Annotated[Path | None, typer.Option("--ca", help="CA of accepted client certificates")] = None,
    tokens: Annotated[Path | None, typer.Option("--tokens", help="file of accepted bearer tokens")] = None,
) -> None:
    """A local job server speaking the PanDA pilot protocol (both dialects), for tests, demos and small sites."""
    from nodepilot.panda.server import run_server

    run_server(jobs, host=host, port=port, db_path=db, port_file=port_file, tls=tls, cert=cert, key=key, ca=ca,
               tokens=tokens)


@app.command()
def service(
    name: Annotated[str, typer.Argument(help="monitor | runner | stager | eventclient")],
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="NODEPILOT_CONFIG",
                                                help="pilot.json (default: NODEPILOT_* variables)")] = None,
) -> None:
    """Run one service in the foreground (what compose starts; the launcher forks the same code)."""
    from nodepilot import service as service_mod
    from nodepilot.registry import service_class

    settings = PilotConfig.load(config) if config else PilotConfig.from_env()
    code = service_mod.run(service_class(name), settings)
    raise typer.Exit(code)


@app.command()
def summary(path: Annotated[Path, typer.Argument(help="a run directory's summary.json")]) -> None:
    """Print the table of jobs a pilot ran."""
    from nodepilot.summary import print_summary

    print_summary(path)


def main() -> None:
    sys.exit(app())




if __name__ == "__main__":
    main()
