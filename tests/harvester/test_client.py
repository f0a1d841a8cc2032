"""HarvesterClient alone: event range reports split between the status dump and the event updates, and
a broken access point as a server error (never an exception the pilot's loop does not expect)."""

from __future__ import annotations

import asyncio
import json

import pytest

from nodepilot.panda.errors import ServerError
from nodepilot.panda.harvester import HarvesterClient
from nodepilot.panda.harvester_files import HarvesterFiles


def test_range_reports_each_in_one_file(tmp_path):
    client = HarvesterClient(HarvesterFiles(tmp_path), wait_s=5)
    (tmp_path / "JobsEventRanges.json").write_text(json.dumps({"9": [{"eventRangeID": f"r{i}"} for i in range(4)]}))

    async def scenario() -> None:
        assert len(await client.acquire_event_ranges(9, 1, 2, 4)) == 4
        zipped = {"zipFile": {"lfn": "z.zip", "fsize": 3, "adler32": "0000abcd"},
                  "eventRanges": [{"eventRangeID": "r0", "eventStatus": "finished"},
                                  {"eventRangeID": "r1", "eventStatus": "finished"}]}
        single = {"zipFile": {"lfn": "o2", "fsize": 1, "adler32": "ad:00000001"},
                  "eventRanges": [{"eventRangeID": "r2", "eventStatus": "finished"}]}
        failed = {"eventRangeID": "r3", "eventStatus": "failed", "errorCode": 1220}
        reply = await client.update_event_ranges([zipped, single, failed], version=1)
        assert reply["Returns"] == [True] * 4
        await client.update_event_ranges([zipped], version=1)  # a repeat after a crash: not declared again

    asyncio.run(scenario())
    request = json.loads((tmp_path / "worker_requestevents.json").read_text())
    assert request == {"9": {"pandaID": 9, "taskID": 2, "jobsetID": 1, "nRanges": 4}}
    dump = json.loads((tmp_path / "event_status.dump.json").read_text())["9"]
    assert [(e["type"], e["eventRangeID"], e.get("isZip")) for e in dump] == [
        ("zip_output", "r0", 1), ("zip_output", "r1", 1), ("es_output", "r2", None)]
    assert dump[0]["guid"] == dump[1]["guid"] and dump[2]["chksum"] == "00000001"
    assert dump[0]["path"] == str(tmp_path / "z.zip")
    updates = json.loads((tmp_path / "worker_updateevents.json").read_text())
    assert updates == {"9": [{"eventRangeID": "r3", "eventStatus": "failed"}]}


def test_a_missing_access_point_is_a_server_error(tmp_path):
    client = HarvesterClient(HarvesterFiles(tmp_path / "gone"), wait_s=1)
    with pytest.raises(ServerError, match="access point"):
        asyncio.run(client.acquire_job({}))
