"""The ``nodepilot`` command."""

import gc
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from nodepilot import exitcodes
from nodepilot.commands import LogFormatOpt, refuse, service, status, summary
from nodepilot.commands import set_log_format as _log_format
from nodepilot.config import PilotConfig
from nodepilot.jobserver.command import serve
from nodepilot.limits import check_frontend, check_pilot, parse_slots
from nodepilot.panda.harvester_mode import PushModeError, enter_push_mode
from nodepilot.proc import pilot_pid
from nodepilot.refargs import REFERENCE_PORT, bool_option, check_resource_type, reference_url

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="nodepilot: a worker-node pilot for PanDA-style distributed computing.")

app.command()(serve)

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/monitor.sock"


def _run_dir(work_dir: Path, given: str) -> str:
    if given:
        return str(Path(given).resolve())
    candidate = work_dir.resolve() / f"run-{pilot_pid()}"
    if len(str(candidate / "eventclient.sock")) <= SOCKET_PATH_MAX:
        return str(candidate)
    return tempfile.mkdtemp(prefix="nodepilot-")  # a deep work dir: sockets must stay short


def _launch(config: PilotConfig, in_process: bool = False, preflight: bool = False,
            ignored: list[str] | None = None, job_failed_code: bool = False) -> int:
    """Read the queue data, then hand the pilot over to its own process (nodepilot/boot.py); returns only the
    exit code of what went wrong before."""
    from nodepilot.boot import hand_over, progress_wanted
    from nodepilot.logs import setup_logging
    from nodepilot.rundir import check_work_dir

    if progress_wanted():
        os.environ.setdefault("NODEPILOT_LOG_LEVEL", "WARNING")  # the progress lines say what INFO lines would
    setup_logging("launcher")
    logger = logging.getLogger("nodepilot")
    if ignored:
        logger.warning("reference-pilot options accepted and ignored: %s", " ".join(ignored))
    try:  # a work dir that can be written
        check_work_dir(Path(config.work_dir))
        config.make_dirs()
    except (OSError, ValueError) as exc:
        logger.error("%s", exc)
        return exitcodes.USAGE
    code = _read_queue(config, logger)
    if code != exitcodes.OK:
        return code
    hand_over(config, in_process, preflight, job_failed_code)


def _read_queue(config: PilotConfig, logger: logging.Logger) -> int:
    """The queue data read and checked into ``config`` (pydantic's models stay in this process, which the
    pilot leaves behind): an exit code."""
    from nodepilot.queue.loader import load
    from nodepilot.queue.sources import SourceFailed

    try:
        config.queuedata = load(config)
    except (OSError, ValueError, SourceFailed) as exc:
        logger.error("queue data: %s", exc)
        return exitcodes.USAGE
    return exitcodes.OK


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
PilotUserOpt = Annotated[str, typer.Option("--pilot-user", envvar="NODEPILOT_PILOT_USER",
                                           help="experiment plug-in (default: the queue's, else generic)")]
KeepOpt = Annotated[bool, typer.Option("--keep-workdirs", envvar="NODEPILOT_KEEP_WORKDIRS", help="keep each job's "
                                       "dir (default: removed once its log is out and its final update delivered)")]
WebPortOpt = Annotated[int, typer.Option("--web-port", envvar="NODEPILOT_WEB_PORT",
                                         help="also serve the monitor's web page on 127.0.0.1:PORT")]


@app.command(context_settings={"allow_interspersed_args": True})
def start(
    queue: QueueOpt = "LOCAL_TEST",
    server: Annotated[str, typer.Option("--server", envvar="NODEPILOT_SERVER", help="PanDA server URL")] = "",
    url: Annotated[str, typer.Option("--url", help="server URL (the reference pilot's; with -p)")] = "",
    port: Annotated[int | None, typer.Option("--port", "-p", help="server port (default: the URL's, else "
                                             f"{REFERENCE_PORT})")] = None,
    site: Annotated[str, typer.Option("--site", "-s", envvar="NODEPILOT_SITE",
                                      help="site name of the worker-node report (default: the queue's)")] = "",
    resource_type: Annotated[str, typer.Option("--resource-type", help="resource type asked for: SCORE, MCORE, "
                                               "SCORE_*, MCORE_*")] = "",
    job_label: Annotated[str, typer.Option("--job-label", "--joblabel", "-j", help="prodSourceLabel")] = "managed",
    job_type: Annotated[str, typer.Option("--job-type", help="job type asked for (managed, user)")] = "",
    working_group: Annotated[str, typer.Option("--working-group", help="workingGroup asked for")] = "",
    country_group: Annotated[str, typer.Option("--country-group", help="countryGroup asked for")] = "",
    allow_other_country: Annotated[str, typer.Option("--allow-other-country", help="true|false")] = "false",
    allow_same_user: Annotated[str, typer.Option("--allow-same-user", help="true|false: later jobs of this "
                                                 "pilot from the first job's task")] = "true",
    send_remaining_time: Annotated[bool, typer.Option("--send-remaining-time", help="ask for jobs that fit the "
                                                      "slot's remaining time")] = False,
    pilot_user: PilotUserOpt = "",
    workflow: Annotated[str, typer.Option("--workflow", "-w", help="generic | standalone")] = "generic",
    lifetime: Annotated[float, typer.Option("--lifetime", "-l", help="slot lifetime, s")] = 0.0,
    debug: Annotated[bool, typer.Option("--debug", "-d", help="debug log messages")] = False,
    no_worker_status: Annotated[bool, typer.Option("--noworkerpilotstatusupdate", "-k",
                                                   help="do not report the Harvester worker's status")] = False,
    api: Annotated[str, typer.Option("--api", envvar="NODEPILOT_API", help="v1 | legacy | relay")] = "v1",
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="heartbeat period, s")] = 1800.0,
    max_jobs: Annotated[int, typer.Option("--max-jobs", help="stop after this many jobs (0: no limit)")] = 0,
    stageout_attempts: Annotated[int, typer.Option("--stageout-attempts", help="tries per output file and "
                                                   "endpoint (0: the stager's default)", min=0, max=20)] = 0,
    workdir: WorkDirOpt = Path("."),
    se_dir: Annotated[str, typer.Option("--se-dir", envvar="NODEPILOT_SE_DIR",
                                        help="a local SE directory (the built-in queue's)")] = "",
    queuedata: QueueDataOpt = "",
    queuedata_url: Annotated[str, typer.Option("--queuedata-url", help="the queue's CRIC record: URL or path "
                                               "({pandaqueue} is replaced)")] = "",
    queuedata_dump: Annotated[str, typer.Option("--queuedata-dump", help="CRIC dump of all queues keyed by name "
                                                "(path or URL)")] = "",
    storagedata_url: Annotated[str, typer.Option("--storagedata-url", help="CRIC DDM endpoints keyed by name "
                                                 "(URL or path)")] = "",
    cacert: Annotated[str, typer.Option("--cacert", help="X.509 proxy for the server (X509_USER_PROXY)")] = "",
    capath: Annotated[str, typer.Option("--capath", help="CA directory (X509_CERT_DIR)")] = "",
    redis_url: RedisOpt = "",
    run_dir: RunDirOpt = "",
    log_format: LogFormatOpt = "plain",
    web_port: WebPortOpt = 0,
    keep_workdirs: KeepOpt = False,
    slots: Annotated[str, typer.Option("--slots", envvar="NODEPILOT_SLOTS",
                                       help="jobs at once: N, or auto (one per core)")] = "1",
    in_process: Annotated[bool, typer.Option("--in-process", help="the services as tasks of this one process "
                                             "(HPC compute nodes)")] = False,
    worker_id: Annotated[str, typer.Option("--worker-id", envvar="NODEPILOT_WORKER_ID",
                                           help="--api relay: this worker's name (default <node>-<pid>)")] = "",
    harvester_kill_file: Annotated[str, typer.Option(help="push mode: left in the access point at the end")
                                   ] = "kill_worker.json",
    harvester_wait: Annotated[float, typer.Option(help="push mode: longest wait for a job or ranges, s")] = 600.0,
    harvester_heartbeat: Annotated[float, typer.Option(help="push mode: worker_heartbeat.json every N min")] = 0.0,
    harvester_access_point: Annotated[str, typer.Option("--harvester-access-point", hidden=True)] = "",
    ignored: Annotated[list[str] | None, typer.Option("--ignored-reference-option", hidden=True)] = None,
) -> None:
    """Run jobs from a PanDA server until it has none or the slot's time is up."""
    try:
        if url or (server and port):
            server = reference_url(url or server, port)
        check_resource_type(resource_type)
        check_pilot(heartbeat, lifetime, max_jobs)
        from nodepilot.panda.connect import check_api
        from nodepilot.queue.preflight import server_url_problem

        check_api(api)
        if server and (problem := server_url_problem(server)):  # before the queue data is even read
            raise ValueError(problem)
        flags = {name: bool_option(name, value) for name, value in
                 (("--allow-other-country", allow_other_country), ("--allow-same-user", allow_same_user))}
    except ValueError as exc:
        typer.echo(f"nodepilot start: {exc}", err=True)
        raise typer.Exit(exitcodes.USAGE) from None
    relay = api.lower() == "relay"
    if relay and not redis_url:
        typer.echo("nodepilot start: --api relay needs the front-end's Redis (--redis-url)", err=True)
        raise typer.Exit(exitcodes.USAGE)
    if harvester_access_point:  # Harvester push mode (docs/hpc.md): no server at all
        server, api, se_dir = "", "harvester", se_dir or harvester_access_point  # the storage is Harvester's
        try:
            harvester_access_point = enter_push_mode(harvester_access_point)
        except PushModeError as exc:
            typer.echo(f"nodepilot start: {exc}", err=True)
            raise typer.Exit(exc.code) from None
    elif not server and not relay:
        typer.echo("nodepilot start: --server (or --url) is required", err=True)
        raise typer.Exit(exitcodes.USAGE)
    _check_slots(slots)
    del workflow  # accepted for wrapper compatibility
    _log_format(log_format)
    if debug:
        os.environ["NODEPILOT_LOG_LEVEL"] = "DEBUG"
    for option, variable in ((cacert, "X509_USER_PROXY"), (capath, "X509_CERT_DIR")):
        if option:
            os.environ[variable] = option
    config = PilotConfig(queue=queue, site=site, server=server, api=api, job_label=job_label,
                         resource_type=resource_type, work_dir=str(workdir.resolve()),
                         run_dir=_run_dir(workdir, run_dir), redis_url=redis_url, se_dir=se_dir,
                         queuedata_file=queuedata, queuedata_url=queuedata_url, queuedata_dump=queuedata_dump,
                         storagedata_url=storagedata_url, heartbeat_s=heartbeat, lifetime_s=lifetime,
                         max_jobs=max_jobs, pilot_user=pilot_user, web_port=web_port, slots=slots,
                         working_group=working_group, job_type=job_type, country_group=country_group,
                         allow_other_country=flags["--allow-other-country"],
                         allow_same_user=flags["--allow-same-user"], send_remaining_time=send_remaining_time,
                         stageout_attempts=stageout_attempts, worker_status_update=not no_worker_status,
                         harvester_dir=harvester_access_point, harvester_kill_file=harvester_kill_file,
                         harvester_wait_s=harvester_wait, harvester_heartbeat_s=harvester_heartbeat * 60,
                         keep_workdirs=keep_workdirs)
    if relay:  # --redis-url is the front-end's; the bus gets a Redis (or a database there) of its own
        from nodepilot.panda.relay import default_worker_id

        config.api, config.relay_url, config.redis_url = "relay", redis_url, ""
        config.worker_id = worker_id or default_worker_id(config.node)
    raise typer.Exit(_launch(config, in_process, preflight=True, ignored=list(ignored or [])))


def _check_slots(slots: str, lifetime: float = 0.0, workers: int = 1, jumbo: int = 1) -> None:
    """--slots, and the front-end's bounded numbers (nodepilot/limits.py)."""
    try:
        parse_slots(slots)
        check_frontend(lifetime, workers, jumbo)
    except ValueError as exc:
        typer.echo(f"nodepilot: {exc}", err=True)
        raise typer.Exit(exitcodes.USAGE) from None


@app.command()
def frontend(
    queue: QueueOpt = "LOCAL_TEST",
    server: Annotated[str, typer.Option("--server", envvar="NODEPILOT_SERVER", help="PanDA server URL")] = "",
    api: Annotated[str, typer.Option("--api", envvar="NODEPILOT_API", help="v1 | legacy")] = "v1",
    site: Annotated[str, typer.Option("--site", "-s", envvar="NODEPILOT_SITE", help="site name")] = "",
    resource: Annotated[str, typer.Option("--resource", "-r", help="workers' resource type, e.g. SCORE")] = "",
    job_label: Annotated[str, typer.Option("--job-label", "-j", help="prodSourceLabel")] = "managed",
    pilot_user: PilotUserOpt = "",
    lifetime: Annotated[float, typer.Option("--lifetime", "-l", help="workers' slot lifetime, s")] = 0.0,
    workdir: WorkDirOpt = Path("."),
    se_dir: SeDirOpt = Path("se"),
    queuedata: QueueDataOpt = "",
    queuedata_url: Annotated[str, typer.Option("--queuedata-url", help="the workers' --queuedata-url")] = "",
    queuedata_dump: Annotated[str, typer.Option("--queuedata-dump", help="the workers' --queuedata-dump")] = "",
    storagedata_url: Annotated[str, typer.Option("--storagedata-url", help="the workers' --storagedata-url")] = "",
    redis_url: Annotated[str, typer.Option("--redis-url", envvar="NODEPILOT_REDIS_URL",
                                           help="the Redis workers reach (default: an embedded one, this host "
                                                "only)")] = "",
    run_dir: RunDirOpt = "",
    log_format: LogFormatOpt = "plain",
    launch: Annotated[str, typer.Option("--launch", help="none | local | slurm: start the workers too")] = "none",
    workers: Annotated[int, typer.Option("--workers", help="--launch local: how many workers")] = 1,
    cores_per_worker: Annotated[int, typer.Option("--cores-per-worker",
                                                  help="--launch slurm: one worker per N cores (0: per node)")] = 0,
    slots: Annotated[str, typer.Option("--slots", help="--launch local: each worker's --slots")] = "1",
    jumbo: Annotated[int, typer.Option("--jumbo", help="share an event-service job among up to N workers")] = 1,
    worker_arg: Annotated[list[str] | None, typer.Option("--worker-arg", help="one more argument for every "
                                                         "worker's nodepilot start (repeatable)")] = None,
) -> None:
    """The front-end of compute nodes without outbound connections: serves their relay requests from its
    Redis, forwards them to the PanDA server (updates stored until delivered), optionally starts them."""
    from nodepilot.frontend import FrontendSettings, run_frontend
    from nodepilot.service import setup_logging

    if not server:
        typer.echo("nodepilot frontend: --server is required", err=True)
        raise typer.Exit(exitcodes.USAGE)
    if api.lower() not in ("v1", "legacy"):
        typer.echo("nodepilot frontend: --api is v1 or legacy (the front-end talks to the server itself)", err=True)
        raise typer.Exit(exitcodes.USAGE)
    _check_slots(slots, lifetime, workers, jumbo)
    _log_format(log_format)
    setup_logging("frontend")
    config = PilotConfig(queue=queue, site=site or queue, server=server, api=api.lower(), job_label=job_label,
                         resource_type=resource, work_dir=str(workdir.resolve()),
                         run_dir=_run_dir(workdir, run_dir), redis_url=redis_url, se_dir=str(se_dir.resolve()),
                         queuedata_file=str(Path(queuedata).resolve()) if queuedata else "", lifetime_s=lifetime,
                         pilot_user=pilot_user, queuedata_url=queuedata_url, queuedata_dump=queuedata_dump,
                         storagedata_url=storagedata_url)
    settings = FrontendSettings(launch=launch, workers=max(1, workers), cores_per_worker=max(0, cores_per_worker),
                                jumbo=max(1, jumbo), slots=slots, worker_args=list(worker_arg or []))
    raise typer.Exit(run_frontend(config, settings))


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="a job definition (JSON)")],
    ranges: Annotated[Path | None, typer.Option("--ranges", exists=True, dir_okay=False,
                                                help="event ranges (JSON list) of an event-service job")] = None,
    queue: QueueOpt = "LOCAL_TEST",
    workdir: WorkDirOpt = Path("."),
    se_dir: SeDirOpt = Path("se"),
    queuedata: QueueDataOpt = "",
    redis_url: RedisOpt = "",
    run_dir: RunDirOpt = "",
    pilot_user: PilotUserOpt = "",
    log_format: LogFormatOpt = "plain",
    web_port: WebPortOpt = 0,
    keep_workdirs: KeepOpt = False,
) -> None:
    """Run one job from a file with no server; updates go to <workdir>/updates.jsonl. Exit code 8 if it failed."""
    from nodepilot.panda.standalone import read_job_file

    _log_format(log_format)
    try:
        read_job_file(job_file)
    except ValueError as exc:
        raise refuse("run", str(exc)) from None
    work = workdir.resolve()
    config = PilotConfig(queue=queue, site=queue, work_dir=str(work), run_dir=_run_dir(workdir, run_dir),
                         redis_url=redis_url, se_dir=str(se_dir), queuedata_file=queuedata, max_jobs=1,
                         job_file=str(job_file.resolve()), updates_file=str(work / "updates.jsonl"),
                         ranges_file=str(ranges.resolve()) if ranges else "", pilot_user=pilot_user,
                         web_port=web_port, keep_workdirs=keep_workdirs)
    raise typer.Exit(_launch(config, job_failed_code=True))


app.command()(status)
app.command()(service)
app.command()(summary)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["start"]:  # the reference pilot's options without a use here: accepted, said once
        # no cyclic collections while the command line is read (~10% of its time): this process ends once it
        # has handed the pilot over (nodepilot/boot.py hand_over), and the pilot enables them once its
        # services run
        gc.disable()
        from nodepilot.panda.harvester_mode import push_access_point
        from nodepilot.refargs import split_ignored

        kept, ignored = split_ignored(args[1:])
        access_point, ignored = push_access_point(ignored)  # -z and --harvester-*: push mode when they say so
        if access_point:
            kept = ["--harvester-access-point", access_point, *kept]
        args = ["start", *kept, *(x for option in ignored for x in ("--ignored-reference-option", option))]
    sys.exit(app(args))


if __name__ == "__main__":
    main()
