"""Pilot settings. Precedence: command line > environment (NODEPILOT_*) > queue data > defaults.

The command line and the environment are resolved by the CLI (typer options carry their
``NODEPILOT_*`` variable); this module holds the result, the queue data, and writes/reads
the run directory's ``pilot.json`` through which separately started services share them.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.queue.model import QueueData
from nodepilot.values import flag

SERVICES = ("monitor", "runner", "stager", "eventclient")


@dataclass
class PilotConfig:
    queue: str = "LOCAL_TEST"
    site: str = ""
    server: str = ""  # PanDA server base URL; empty: standalone (nodepilot run)
    api: str = "v1"
    job_label: str = "managed"
    resource_type: str = ""
    work_dir: str = "."  # jobs run in <work_dir>/PanDA_Pilot-<id>
    keep_workdirs: bool = False  # else a job's dir is removed once its log is out and its final update delivered
    run_dir: str = ""  # sockets, pilot.json, redis; default <work_dir>/run-<pid>
    redis_url: str = ""  # given: use that Redis; empty: the launcher embeds one
    se_dir: str = "se"  # the built-in local queue's SE ("" with a real server: storage must be defined)
    queuedata_file: str = ""  # our own settings (docs/queues.md), or one flat CRIC queue record
    queuedata_url: str = ""  # the CRIC queue record: http(s)/file URL or path (PanDA's schedconfig cache...)
    queuedata_dump: str = ""  # a CRIC dump of every queue keyed by name (path or URL)
    storagedata_url: str = ""  # the CRIC DDM endpoints keyed by name (path or URL)
    working_group: str = ""
    job_type: str = ""
    country_group: str = ""
    allow_other_country: bool = False
    allow_same_user: bool = True  # later jobs of a pilot ask for the first job's task
    send_remaining_time: bool = False  # acquire asks for jobs that fit the slot's remaining time
    stageout_attempts: int = 0  # 0: the stager's (queue data's) own
    worker_status_update: bool = True  # Harvester's worker status is reported (-k: not)
    heartbeat_s: float = 1800.0
    lifetime_s: float = 0.0  # 0: no limit besides the queue's
    max_jobs: int = 0  # 0: as many as the server gives while time allows
    pilot_id_tag: str = "nodepilot"
    updates_file: str = ""  # standalone mode: updates go to this JSONL file, not a server
    job_file: str = ""  # standalone mode: the one job definition to run
    ranges_file: str = ""  # standalone event-service job: its event ranges (JSON list)
    pilot_user: str = ""  # experiment plug-in (nodepilot.experiments); empty: the queue's, else generic
    web_port: int = 0  # the monitor's read-only web page also on 127.0.0.1:<port> (0: socket only)
    slots: str = "1"  # jobs at once: a number, or "auto" (one per core); nodepilot/slots.py
    relay_url: str = ""  # --api relay: the front-end's Redis (redis_url is then this worker's database there)
    worker_id: str = ""  # --api relay: this worker's name at the front-end (default <node>-<pid>)
    harvester_dir: str = ""  # Harvester push mode: this pilot's access point (nodepilot/panda/harvester.py)
    harvester_kill_file: str = "kill_worker.json"  # push mode: left in the access point at the end
    harvester_wait_s: float = 600.0  # push mode: the longest wait for a later job's spec or for event ranges
    harvester_heartbeat_s: float = 0.0  # push mode: worker_heartbeat.json refreshed this often (0: not)
    node: str = field(default_factory=socket.gethostname)
    queuedata: QueueData = field(default_factory=QueueData)

    # --- derived paths -------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def socket_path(self, service: str) -> Path:
        return self.run_path / f"{service}.sock"

    @property
    def config_path(self) -> Path:
        return self.run_path / "pilot.json"

    # --- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PilotConfig:
        data = dict(data)
        queue = QueueData.from_dict(data.pop("queuedata", {}) or {})
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, queuedata=queue)

    def make_dirs(self) -> Path:
        """The run dir (sockets, Redis password: the pilot's user only) and the work dir; returns the run dir."""
        run = Path(self.run_dir)
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(run, 0o700)  # also when it existed, or the umask narrowed mkdir's mode
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        return run

    def save(self) -> Path:
        """Write pilot.json readable by the pilot's user only (it holds the Redis password)."""
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PilotConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PilotConfig:
        """A config from NODEPILOT_<FIELD> variables (how compose configures each container)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            raw = env.get(f"NODEPILOT_{name.upper()}")
            if raw is None or name == "queuedata":
                continue
            kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
            values[name] = (float(raw) if kind == "float" else int(raw) if kind == "int"
                            else flag(raw) if kind == "bool" else raw)
        return cls(**values)
