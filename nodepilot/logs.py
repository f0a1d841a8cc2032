"""Log set-up of every nodepilot process: plain lines for people (default), or one JSON object per
line for log collectors (``--log-format json`` / ``NODEPILOT_LOG_FORMAT=json``).

A JSON line has ``time``, ``level``, ``service``, ``logger``, ``message``, and ``PandaID`` and
``step`` when known. The job and step come from the context a service sets around a job's work
(``job_context``, ``set_step``); without one, a message written the project's way,
``log.info("job %s: ...", job_id, ...)``, still names its job.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime

FORMATS = ("plain", "json")
FORMAT_ENV = "NODEPILOT_LOG_FORMAT"
LEVEL_ENV = "NODEPILOT_LOG_LEVEL"
# libraries' loggers held above the pilot's level: httpx says one line per request (noise); httpcore's DEBUG
# trace holds the headers of answers, e.g. a Rucio auth token (nothing secret may reach a log line)
LIBRARY_LEVELS = {"httpx": logging.WARNING, "httpcore": logging.INFO}

current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar("nodepilot_job", default=None)
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("nodepilot_step", default=None)


@contextlib.contextmanager
def job_context(job_id: int | None, step: str | None = None) -> Iterator[None]:
    """Every record logged inside (also by tasks started inside) carries this job and step."""
    job_token = current_job.set(job_id)
    step_token = current_step.set(step)
    try:
        yield
    finally:
        current_step.reset(step_token)
        current_job.reset(job_token)


def set_step(step: str | None) -> None:
    """The step of the current job from here on in this task (stagein, payload, stageout, ...)."""
    current_step.set(step)


def job_of(record: logging.LogRecord) -> int | None:
    """The PandaID a record is about: given with ``extra``, from the context, or its "job %s" message."""
    given = getattr(record, "job_id", None)
    if given is not None:
        return given
    job = current_job.get()
    if job is not None:
        return job
    args = record.args
    if isinstance(record.msg, str) and record.msg.startswith("job %s") and isinstance(args, tuple) and args:
        first = args[0]
        if isinstance(first, int) and not isinstance(first, bool):
            return first
        if isinstance(first, str) and first.isdigit():
            return int(first)
    return None


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = job_of(record)
        if job is not None:
            entry["PandaID"] = job
        step = getattr(record, "step", None) or current_step.get()
        if step:
            entry["step"] = step
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_format(given: str | None = None) -> str:
    fmt = (given or os.environ.get(FORMAT_ENV) or "plain").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def setup_logging(service: str, level: str | None = None, fmt: str | None = None) -> None:
    """Root logging of this process for ``service`` (an unknown format falls back to plain)."""
    level = level or os.environ.get(LEVEL_ENV, "INFO")
    try:
        chosen = log_format(fmt)
    except ValueError:
        chosen = "plain"
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):  # a forked service replaces the launcher's handler
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, library_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(library_level)
