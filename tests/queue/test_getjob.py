"""The job request's fields and the time floor's rule (services/monitor/getjob.py)."""

from __future__ import annotations

import time

from nodepilot.config import PilotConfig
from nodepilot.queue.model import QueueData
from services.monitor.getjob import getjob_fields, timefloor_allows


def test_fields_of_a_job_request(monkeypatch):
    monkeypatch.setenv("HARVESTER_ID", "h1")
    monkeypatch.setenv("HARVESTER_WORKER_ID", "9")
    config = PilotConfig(queue="Q", site="S", job_label="managed", working_group="AP", job_type="user",
                         send_remaining_time=True)
    fields = getjob_fields(config, 700, 3600.5)
    assert fields["siteName"] == fields["computingElement"] == "Q"  # the queue, never the --site
    assert (fields["workingGroup"], fields["jobType"], fields["taskID"]) == ("AP", "user", 700)
    assert (fields["harvester_id"], fields["worker_id"], fields["remaining_time"]) == ("h1", "9", 3600)
    config.allow_same_user, config.send_remaining_time = False, False
    assert "taskID" not in getjob_fields(config, 700, 10) and "remaining_time" not in getjob_fields(config, None, 10)
    config.queuedata = QueueData(status="test")
    assert getjob_fields(config, None, 10)["prodSourceLabel"] == "test"
    config.job_label = "ptest"
    assert getjob_fields(config, None, 10)["prodSourceLabel"] == "ptest"


def test_time_floor():
    now = time.time()
    assert timefloor_allows(None, 5, now - 10**6)  # not set: the slot's time decides
    assert timefloor_allows(0, 0, now) and not timefloor_allows(0, 1, now)
    assert timefloor_allows(2, 3, now - 119) and not timefloor_allows(2, 3, now - 121)
