"""The experiment plug-in interface: what an experiment may change in a job's workflow.

The monitor calls, for each job, in this order: ``setup`` and ``environment`` and ``container``
when it asks the runner to start the payload, then ``extra_outputs`` before the stage-out. The
runner calls ``read_report`` once the payload has ended. Every method has a generic default, so
a plug-in overrides only what its experiment does differently (docs/manual-experiments.md).
"""

from __future__ import annotations

from pathlib import Path

from nodepilot.job import FileSpec, Job
from nodepilot.queue.model import QueueData
from nodepilot.reports import SETUP_FAILED_MARK, Reports, read_reports


class Experiment:
    name = "base"

    def setup(self, job: Job, queuedata: QueueData) -> str:
        """Shell commands run in the payload's own shell after the site's ``envsetup``, before the
        payload's command (e.g. set up the software release). Quote whatever comes from the job."""
        return ""

    def environment(self, job: Job, queuedata: QueueData) -> dict[str, str]:
        """Extra environment variables for the payload."""
        return {}

    def container(self, job: Job, queuedata: QueueData) -> str:
        """The container image to run the payload in ("": none); default: the job's ``container_name``."""
        return job.container_name

    def read_report(self, workdir: Path) -> Reports:
        """What the payload's report says (exit code and message, events, output GUIDs); runs in the
        runner after the payload ended. Default: ``jobReport.json`` / ``payload_error_report.json``."""
        return read_reports(workdir)

    def handles_time_signal(self, job: Job, queuedata: QueueData) -> bool | None:
        """Whether the payload handles the slot's time warning signal (queue data
        ``watchdog.time_budget_signal``, SIGUSR1 by default), whose default action would kill it:
        True, it gets the signal; False, it does not; None (the default): the plug-in does not say,
        the queue data does (docs/operations.md "The slot's time budget")."""
        return None

    def extra_outputs(self, job: Job, workdir: Path) -> list[FileSpec]:
        """Files in ``workdir``, besides the job's outputs, to stage out with them (after the payload)."""
        return []




def setup_script(experiment: Experiment, job: Job, queuedata: QueueData) -> str:
    """What runs before the payload's command in its shell: the site's envsetup, then the experiment's.
    Each runs in the payload's shell (a ``{ }`` group: what it exports stays); if its last command fails,
    the payload does not run and the job fails with 1110 (SETUP_FAILED)."""
    steps = (("the queue's envsetup", queuedata.envsetup),
             (f"the {experiment.name} setup", experiment.setup(job, queuedata)))
    return "\n".join(_guarded(what, text) for what, text in steps if text.strip())


def _guarded(what: str, text: str) -> str:
    return (f"{{ {text}\n}} || {{ code=$?; echo \"nodepilot: {what} failed (exit $code)\" >&2; "
            f"echo \"{what} failed (exit $code)\" > {SETUP_FAILED_MARK}; exit $code; }}")
