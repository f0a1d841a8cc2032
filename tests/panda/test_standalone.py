"""StandaloneClient: one job from a file, updates appended to a JSONL file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from nodepilot.config import PilotConfig
from nodepilot.panda.client import UpdateReply
from nodepilot.panda.connect import make_client
from nodepilot.panda.errors import ServerError
from nodepilot.panda.standalone import StandaloneClient

JOB = {"PandaID": 4242, "attemptNr": 1, "transformation": "run.sh", "jobPars": "--x"}


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_the_job_is_handed_out_once(tmp_path: Path):
    (tmp_path / "job.json").write_text(json.dumps(JOB))
    client = StandaloneClient(tmp_path / "job.json", tmp_path / "updates.jsonl")

    async def twice() -> list[Any]:
        return [await client.acquire_job({"siteName": "Q"}), await client.acquire_job({"siteName": "Q"})]

    assert run(twice()) == [JOB, None]


def test_a_broken_definition_is_returned_as_written(tmp_path: Path):
    (tmp_path / "job.json").write_text('{"PandaID": "abc"}')
    assert run(StandaloneClient(tmp_path / "job.json", tmp_path / "u.jsonl").acquire_job({})) == {"PandaID": "abc"}


@pytest.mark.parametrize("content", [None, "{not json"])
def test_an_unreadable_job_file_is_an_error(tmp_path: Path, content: str | None):
    if content is not None:
        (tmp_path / "job.json").write_text(content)
    with pytest.raises(ServerError, match="job file"):
        run(StandaloneClient(tmp_path / "job.json", tmp_path / "u.jsonl").acquire_job({}))


def test_updates_are_appended_as_json_lines(tmp_path: Path):
    updates = tmp_path / "sub" / "updates.jsonl"
    client = StandaloneClient(tmp_path / "job.json", updates)
    first = {"jobId": 4242, "state": "running", "timestamp": "2026-01-01T10:00:00"}
    final = {"jobId": 4242, "state": "finished", "pilotErrorCode": 0, "xml": "{}"}
    before = time.time()
    replies = [run(client.update_job(first)), run(client.update_job(final))]

    assert replies == [UpdateReply(command=None, status_code=0, raw={})] * 2
    lines = [json.loads(line) for line in updates.read_text().splitlines()]
    assert [line["fields"] for line in lines] == [first, final]
    assert all(before <= line["time"] <= time.time() for line in lines)


def test_make_client_chooses_standalone_when_a_job_file_is_given(tmp_path: Path):
    config = PilotConfig(server="https://ignored.example.org", job_file=str(tmp_path / "job.json"),
                         work_dir=str(tmp_path))
    client = make_client(config)
    assert isinstance(client, StandaloneClient)
    assert client.updates_file == tmp_path / "updates.jsonl"  # default when none is configured
