"""What a job request says about the pilot (the reference pilot's getJob fields), and the queue's time
floor: whether a pilot that has run jobs may ask for one more (docs/queues.md)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from nodepilot.config import PilotConfig

log = logging.getLogger(__name__)


def getjob_fields(config: PilotConfig, task_id: int | None, time_left: float) -> dict[str, Any]:
    """The fields that do not depend on what is free on the node (the caller adds those)."""
    label = config.job_label
    if config.queuedata.status.lower() == "test" and label != "ptest":  # a queue in test gets test jobs
        label = "test"
    fields: dict[str, Any] = {
        "siteName": config.queue, "computingElement": config.queue, "prodSourceLabel": label,
        "node": config.node, "workingGroup": config.working_group, "jobType": config.job_type,
        "countryGroup": config.country_group, "allowOtherCountry": str(config.allow_other_country),
        "harvester_id": os.environ.get("HARVESTER_ID"), "worker_id": os.environ.get("HARVESTER_WORKER_ID"),
    }
    if config.allow_same_user and task_id:
        fields["taskID"] = task_id
    if config.send_remaining_time and time_left != float("inf"):
        fields["remaining_time"] = max(0, int(time_left))
    return fields


def timefloor_allows(timefloor_min: int | None, taken: int, started: float) -> bool:
    """A queue's time floor (minutes from the pilot's start) while new jobs may be taken: the first job
    always; 0 means one job per pilot; None (no floor set) means as long as the slot's time allows."""
    if timefloor_min is None or taken == 0:
        return True
    if timefloor_min == 0:
        log.info("not asking for more jobs: the queue's time floor is 0 (one job per pilot)")
        return False
    elapsed = time.time() - started
    if elapsed > timefloor_min * 60:
        log.info("not asking for more jobs: %.0f s since the start, past the queue's time floor of %d min",
                 elapsed, timefloor_min)
        return False
    return True
