"""Jumbo jobs: the definition each share runs and the one final update made of the shares' finals."""

from __future__ import annotations

import json

from nodepilot.jumbo import SHARE_MARK, merge_finals, share_definition


def test_share_definitions_write_distinct_files():
    raw = {"PandaID": 1, "outFiles": "es1.log.tgz,hits.root", "logFile": "es1.log.tgz", "logGUID": "g-1"}
    assert share_definition(raw, 1) == {**raw, SHARE_MARK: 1}  # marked: other workers hold ranges of the job
    second = share_definition(raw, 2)
    assert second["outFiles"] == "es1_2.log.tgz,hits_2.root" and second["logFile"] == "es1_2.log.tgz"
    assert second[SHARE_MARK] == 2
    assert "logGUID" not in second and raw["logGUID"] == "g-1"  # the job's own definition is untouched


def test_finals_merge_into_one():
    finished = {"jobId": 1, "state": "finished", "nEvents": 300, "cpuConsumptionTime": 20, "coreCount": 1,
                "maxRSS": 1000, "startTime": "2026-01-01 10:00:05", "endTime": "2026-01-01 10:05:00",
                "pilotErrorCode": 0, "xml": json.dumps({"es1.log.tgz": {"fsize": 1}})}
    failed = {"jobId": 1, "state": "failed", "nEvents": 100, "cpuConsumptionTime": 5, "coreCount": 1,
              "maxRSS": 3000, "startTime": "2026-01-01 10:00:00", "endTime": "2026-01-01 10:07:00",
              "pilotErrorCode": 1305, "xml": json.dumps({"es1_2.log.tgz": {"fsize": 2}})}
    merged = merge_finals([failed, finished])
    assert merged["state"] == "finished" and merged["pilotErrorCode"] == 0
    counts = (merged["nEvents"], merged["cpuConsumptionTime"], merged["coreCount"], merged["maxRSS"])
    assert counts == (400, 25, 2, 3000)
    assert (merged["startTime"], merged["endTime"]) == ("2026-01-01 10:00:00", "2026-01-01 10:07:00")
    assert set(json.loads(merged["xml"])) == {"es1.log.tgz", "es1_2.log.tgz"}
    assert merge_finals([failed])["state"] == "failed"
