"""A job whose pilot code fails: its payload is stopped and its log staged out before the slot is
given to the next job (a real Redis; the runner and the stager played by their stream contracts)."""

from __future__ import annotations

import asyncio
from typing import Any

from nodepilot import bus
from nodepilot.errors import ErrorCode
from nodepilot.job import FileSpec, Job
from services.monitor.jobrun import JobRun

JOB = 9301


async def serve_once(r: Any, stream: str, matches: Any, answer: Any) -> dict[str, Any]:
    """Read ``stream`` until a request ``matches``; emit ``answer(request)`` on the job's stream."""
    last = "0"
    while True:
        for _stream, entries in await r.xread({stream: last}, block=5000) or []:
            for entry_id, fields in entries:
                last = entry_id
                message = bus.decode(fields)
                if matches(message):
                    event = answer(message)
                    await bus.emit(r, JOB, "test", event.pop("type"), **event)
                    return message


def test_a_failed_job_stops_its_payload_and_stages_its_log(redis_url, pilot_config):
    job = Job(panda_id=JOB, attempt_nr=1, transformation="bash", log=FileSpec(lfn="job.log.tgz", scope="demo"))

    async def scenario() -> tuple[JobRun, dict[str, Any], dict[str, Any]]:
        r = bus.connect(redis_url)
        run = JobRun(job, pilot_config, r, outbox=None)  # type: ignore[arg-type]
        run.set_step("payload")  # the payload was started and nothing has answered yet
        runner = asyncio.create_task(serve_once(
            r, bus.RUNNER_REQUESTS, lambda m: m.get("action") == "kill" and m.get("job_id") == JOB,
            lambda m: {"type": "payload_finished", "request_id": f"{JOB}:1:run", "exit_code": None, "signal": 15}))
        stager = asyncio.create_task(serve_once(
            r, bus.STAGER_REQUESTS, lambda m: m.get("kind") == "stagelog",
            lambda m: {"type": "stagelog_done", "request_id": m["request_id"], "ok": True,
                       "files": [{"lfn": "job.log.tgz", "status": "done", "fsize": 10}]}))
        await asyncio.wait_for(run.abandon(RuntimeError("a bug")), 30)
        kill, log_request = await asyncio.wait_for(asyncio.gather(runner, stager), 5)
        await r.aclose()
        return run, kill, log_request

    run, kill, log_request = asyncio.run(scenario())
    assert kill["job_id"] == JOB and "failed" in kill["reason"]  # the payload's tree is stopped first
    assert log_request["log"]["lfn"] == "job.log.tgz"  # then the log goes out
    assert run.payload.get("signal") == 15 and [f["lfn"] for f in run.staged] == ["job.log.tgz"]
    assert run.result.state == "failed" and run.result.pilot_error_code == ErrorCode.PILOT_EXCEPTION
    assert "a bug" in run.result.pilot_error_diag
