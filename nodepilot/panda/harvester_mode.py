"""Whether the reference pilot's command line puts the pilot into Harvester push mode, the access point it
works in, and the storage it stages to there (docs/hpc.md).

Push mode, as the reference pilot decides it: ``-z`` with ``--harvester-workdir`` or ``--harvester-datadir``
(or with ``--harvester-eventstatusdump``/``--harvester-workerattributes``, flags only), or ``HARVESTER_ID``
or ``HARVESTER_WORKER_ID`` in the environment with ``--harvester-submit-mode PUSH``. Otherwise these options
stay accepted and ignored, as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nodepilot import exitcodes
from nodepilot.panda.harvester_files import HarvesterFiles, read_json
from nodepilot.queue.model import Endpoint, QueueData

OPTIONS = ("-z", "--noserverupdate", "--harvester-workdir", "--harvester-datadir", "--harvester-eventstatusdump",
           "--harvester-workerattributes", "--harvester-submit-mode")
STORAGE_NAME = "HARVESTER_ACCESS_POINT"
STAGED_ACTIVITIES = ("read_lan", "write_lan", "pl", "es_events")
COPY_MODE_ENV = "NODEPILOT_POSIX_COPY_MODE"  # the posix mover's (services/stager/movers/posix.py)
RANK_VARIABLES = ("NODEPILOT_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def _values(ignored: list[str]) -> dict[str, str]:
    """``{"--harvester-workdir": "/ap", "-z": ""}`` from options as ``split_ignored`` returns them."""
    found: dict[str, str] = {}
    for given in ignored:
        name, sep, value = given.partition("=") if given.startswith("--") and "=" in given.split(" ")[0] \
            else given.partition(" ")
        if name in OPTIONS:
            found[name] = value.strip() if sep else ""
    return found


def push_access_point(ignored: list[str], env: Mapping[str, str] | None = None,
                      cwd: Path | None = None) -> tuple[str | None, list[str]]:
    """(the access point when the options ask for push mode, else None; the options still ignored)."""
    env = os.environ if env is None else env
    given = _values(ignored)
    no_update = "-z" in given or "--noserverupdate" in given
    workdir = given.get("--harvester-workdir") or given.get("--harvester-datadir") or ""
    flags = given.get("--harvester-eventstatusdump") or given.get("--harvester-workerattributes")
    harvester_env = bool(env.get("HARVESTER_ID") or env.get("HARVESTER_WORKER_ID"))
    push = ((no_update and (workdir or flags))
            or (harvester_env and given.get("--harvester-submit-mode", "").upper() == "PUSH"))
    if not push:
        return None, ignored
    where = workdir or env.get("HARVESTER_WORKDIR") or str(cwd or Path.cwd())
    still = [g for g in ignored if g.split(" ")[0].split("=")[0] not in OPTIONS]
    return str(Path(where).resolve()), still


class PushModeError(ValueError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def job_access_point(access_point: Path, env: Mapping[str, str] | None = None) -> Path:
    """This pilot's own access point. With Harvester's MultiJobs layout (``worker_pandaids.json`` at the
    worker's access point, one sub-directory per PandaID) each pilot, one per node, takes the job of its
    rank (``SLURM_PROCID`` under srun). PushModeError when there is no job for this rank (exit code 0) or
    the list is broken (2)."""
    env = os.environ if env is None else env
    files = HarvesterFiles(access_point)
    if any(files.path(name).exists() for name in files.job_specs):
        return access_point
    try:
        ids = read_json(files.path(files.pandaids))
    except ValueError:
        ids = False
    if ids is None:
        return access_point
    if not isinstance(ids, list) or not all(isinstance(i, int | str) for i in ids):
        raise PushModeError(f"{files.path(files.pandaids)}: expected a JSON list of PandaIDs", exitcodes.USAGE)
    rank_text = next((env[v] for v in RANK_VARIABLES if env.get(v)), "0")
    if not rank_text.isdigit():
        raise PushModeError(f"rank {rank_text!r} is not a number", exitcodes.USAGE)
    if int(rank_text) >= len(ids):
        raise PushModeError(f"no job for this pilot: {files.path(files.pandaids)} lists {len(ids)} job(s), "
                            f"none for rank {rank_text}", exitcodes.OK)
    return access_point / str(ids[int(rank_text)])


def enter_push_mode(access_point: str) -> str:
    """This pilot's access point, checked; inputs will be used where Harvester placed them. PushModeError
    (with the exit code) when there is nothing this pilot can do there."""
    where = Path(access_point)
    if not where.is_dir():
        raise PushModeError(f"Harvester's access point {where} is not a directory", exitcodes.USAGE)
    mine = job_access_point(where)
    os.environ.setdefault(COPY_MODE_ENV, "link")  # the stager's: inputs hard-linked, not copied
    return str(mine)


def access_point_storage(queue: QueueData, access_point: Path) -> None:
    """Harvester stages in and out: inputs are read where Harvester placed them (the stager links them into
    the job's directory), outputs and the log are left in the access point for Harvester's stager."""
    endpoint = Endpoint(STORAGE_NAME, access_point.as_uri(), 0)  # an id: event range reports name one
    for activity in STAGED_ACTIVITIES:
        queue.endpoints[activity] = [endpoint]
        queue.copytools[activity] = ["posix"]
    queue.endpoints.pop("log_se", None)
