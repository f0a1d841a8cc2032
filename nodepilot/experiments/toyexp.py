"""``toyexp``: the worked example of a joining experiment (docs/manual-experiments.md).

- Setup: its software lives in ``$TOYEXP_SW_BASE/<homepackage>/<swRelease>`` (the site's envsetup
  may set ``TOYEXP_SW_BASE``; default /cvmfs/toyexp.example.org/sw). The setup exports that
  directory as ``TOYEXP_SW_DIR`` and sources its ``setup.sh`` when there is one.
- Report: the payload writes ``toy_report.txt``, ``key=value`` lines: ``status`` (exit code, 0 is
  fine), ``message``, ``events`` (events processed) and ``guid.<lfn>`` (an output's GUID).
- Container: the job's ``container_name``, else the image of its release, ``toyexp/release:<swRelease>``.
- Extra output: the report is stored with the outputs, as ``toy_report.<PandaID>.txt``.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from nodepilot.experiments.base import Experiment
from nodepilot.job import FileSpec, Job
from nodepilot.queue.model import QueueData
from nodepilot.reports import Reports, read_limited

REPORT = "toy_report.txt"
DEFAULT_SW_BASE = "/cvmfs/toyexp.example.org/sw"
DEFAULT_PACKAGE = "ToyCore"
IMAGE = "toyexp/release"


def release(job: Job) -> str:
    return job.sw_release or "latest"


class ToyExperiment(Experiment):
    name = "toyexp"

    def setup(self, job: Job, queuedata: QueueData) -> str:
        package = shlex.quote(job.homepackage or DEFAULT_PACKAGE)
        return "\n".join((
            f'export TOYEXP_SW_DIR="${{TOYEXP_SW_BASE:-{DEFAULT_SW_BASE}}}"/{package}/{shlex.quote(release(job))}',
            f"export TOYEXP_RELEASE={shlex.quote(release(job))}",
            'if [ -f "$TOYEXP_SW_DIR/setup.sh" ]; then . "$TOYEXP_SW_DIR/setup.sh"; fi',
        ))

    def environment(self, job: Job, queuedata: QueueData) -> dict[str, str]:
        return {"TOYEXP_REPORT": REPORT, "TOYEXP_PLATFORM": job.cmtconfig or "any"}

    def container(self, job: Job, queuedata: QueueData) -> str:
        return job.container_name or f"{IMAGE}:{release(job)}"

    def read_report(self, workdir: Path) -> Reports:
        reports = Reports()
        text, note = read_limited(workdir / REPORT)
        if note:
            reports.notes.append(note)
        if text is None:
            return reports
        reports.text = text
        for number, line in enumerate(text.splitlines(), 1):
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not sep:
                reports.notes.append(f"{REPORT} line {number} is not key=value")
            elif key == "status":
                reports.exit_code = _integer(value, reports, number)
            elif key == "message":
                reports.exit_msg = value
            elif key == "events":
                reports.n_events = max(_integer(value, reports, number) or 0, 0)
            elif key.startswith("guid.") and value:
                reports.output_guids[key.removeprefix("guid.")] = value
        return reports

    def extra_outputs(self, job: Job, workdir: Path) -> list[FileSpec]:
        report = workdir / REPORT
        if not job.outputs or not report.is_file():
            return []
        first = job.outputs[0]
        lfn = f"toy_report.{job.panda_id}.txt"
        shutil.copyfile(report, workdir / lfn)
        return [FileSpec(lfn=lfn, scope=first.scope, ddm_endpoint=first.ddm_endpoint, dataset=first.dataset,
                         destination_dblock=first.destination_dblock)]


def _integer(value: str, reports: Reports, number: int) -> int | None:
    try:
        return int(value)
    except ValueError:
        reports.notes.append(f"{REPORT} line {number}: {value[:40]!r} is not a number")
        return None
