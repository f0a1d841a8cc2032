"""No request vanishes: a handler that raised is answered with an error (and only then acknowledged),
and a monitor's wait for an answer ends at its deadline with a failed job (a real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nodepilot import bus, deadlines
from nodepilot.errors import ErrorCode
from nodepilot.job import FileSpec, Job
from services.eventclient.service import EventClientService
from services.monitor.jobrun import JobRun
from services.runner.service import RunnerService
from services.stager.service import StagerService

JOB = 9401


async def _consume(url: str, on_error: Any, want_handled: int = 1) -> bus.Consumer:
    r = bus.connect(url)

    async def handler(_entry_id: str, _message: dict) -> None:
        raise RuntimeError("a bug in the handler")

    consumer = bus.Consumer(r, "work", "g", "c1", handler, block_ms=200, claim_idle_ms=100_000, on_error=on_error)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(10):
            while consumer.handled < want_handled and not getattr(on_error, "tried", False):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=2)
        await consumer.aclose()
        await r.aclose()
    return consumer


def test_a_failed_handler_is_answered_then_acknowledged(redis_url, rds):
    answered: list[tuple[dict, str]] = []

    async def on_error(message: dict, exc: BaseException) -> None:
        answered.append((message, str(exc)))

    rds.xadd("work", bus.encode({"n": 1}))
    asyncio.run(_consume(redis_url, on_error))
    assert answered == [({"n": 1}, "a bug in the handler")]
    assert rds.xpending("work", "g")["pending"] == 0


def test_a_failure_that_cannot_be_answered_stays_pending(redis_url, rds):
    async def on_error(_message: dict, _exc: BaseException) -> None:
        on_error.tried = True  # type: ignore[attr-defined]
        raise ConnectionError("Redis gone")

    rds.xadd("work", bus.encode({"n": 1}))
    consumer = asyncio.run(_consume(redis_url, on_error))
    assert consumer.handled == 0
    assert rds.xpending("work", "g")["pending"] == 1  # delivered again to the next reader


def _first_event(rds, type_: str, timeout: float = 10.0) -> dict:
    from tests.conftest import read_events
    return read_events(rds, JOB, {type_}, timeout=timeout)[-1]


async def _serve_with_bug(service: Any, method: str, stream: str, message: dict) -> None:
    async def bug(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug")

    setattr(service, method, bug)
    task = asyncio.create_task(service._consume())
    await service.redis.xadd(stream, bus.encode(message))
    try:
        async with asyncio.timeout(10):
            while not await service.redis.exists(bus.job_events(JOB)):
                await asyncio.sleep(0.02)
    finally:
        service.stopping.set()
        task.cancel()
        await asyncio.wait([task], timeout=5)
        await service.redis.aclose()


@pytest.mark.parametrize(("cls", "method", "stream", "message", "answer", "code"), [
    (RunnerService, "_run", bus.RUNNER_REQUESTS,
     {"action": "run", "job_id": JOB, "request_id": f"{JOB}:1:run", "workdir": "/tmp", "command": "true"},
     "payload_finished", ErrorCode.PILOT_EXCEPTION),
    (StagerService, "_result", bus.STAGER_REQUESTS,
     {"kind": "stagein", "job_id": JOB, "request_id": f"{JOB}:1:stagein", "files": [{"lfn": "a.root"}]},
     "stagein_done", ErrorCode.PILOT_EXCEPTION),
    (EventClientService, "_start", bus.EVENTCLIENT_REQUESTS,
     {"action": "start", "job_id": JOB, "request_id": f"{JOB}:1:es-start"}, "es_ready", ErrorCode.ES_FATAL),
    (EventClientService, "_finish", bus.EVENTCLIENT_REQUESTS,
     {"action": "finish", "job_id": JOB, "request_id": f"{JOB}:1:es-finish"}, "es_done", ErrorCode.PILOT_EXCEPTION),
])
def test_every_service_answers_a_request_its_handler_failed_on(rds, pilot_config, cls, method, stream, message,
                                                                answer, code):
    async def scenario() -> None:
        await _serve_with_bug(cls(pilot_config), method, stream, message)

    asyncio.run(scenario())
    event = _first_event(rds, answer)
    assert event["request_id"] == message["request_id"]
    assert int(event.get("pilot_error_code") or event.get("error_code")) == code
    assert "internal error" in (event.get("pilot_error_diag") or event.get("diag"))
    group = cls.name if cls is not RunnerService else "runner"
    assert rds.xpending(stream, group)["pending"] == 0


def test_a_wait_without_an_answer_fails_the_job_at_its_deadline(redis_url, pilot_config):
    job = Job(panda_id=JOB, attempt_nr=1, transformation="bash")

    async def scenario() -> tuple[JobRun, dict[str, Any], float]:
        r = bus.connect(redis_url)
        run = JobRun(job, pilot_config, r, outbox=None)  # type: ignore[arg-type]
        t0 = asyncio.get_running_loop().time()
        event = await asyncio.wait_for(run.wait_for(f"{JOB}:1:stagein", "stagein_done", 0.5), 10)
        waited = asyncio.get_running_loop().time() - t0
        await r.aclose()
        return run, event, waited

    run, event, waited = asyncio.run(scenario())
    assert 0.5 <= waited < 5
    assert event["ok"] is False and event["no_answer"] is True
    assert run.result.pilot_error_code == ErrorCode.STAGEIN_TIMEOUT
    assert run.result.pilot_error_diag == f"no answer from the stager to request {JOB}:1:stagein (stagein_done) " \
                                          "within 0.5 s"


def test_a_payload_without_an_answer_is_killed_and_fails_the_job(redis_url, rds, pilot_config):
    job = Job(panda_id=JOB, attempt_nr=1, transformation="bash")

    async def scenario() -> JobRun:
        r = bus.connect(redis_url)
        run = JobRun(job, pilot_config, r, outbox=None)  # type: ignore[arg-type]
        await asyncio.wait_for(run.wait_for(f"{JOB}:1:run", "payload_finished", 0.3), 10)
        await r.aclose()
        return run

    run = asyncio.run(scenario())
    assert run.result.pilot_error_code == ErrorCode.PILOT_EXCEPTION
    assert "no answer from the runner" in run.result.pilot_error_diag
    kills = [bus.decode(f) for _id, f in rds.xrange(bus.RUNNER_REQUESTS)]
    assert [k["action"] for k in kills] == ["kill"] and kills[0]["job_id"] == JOB


def test_deadlines_follow_the_stagers_bounds_and_the_jobs_wall_time(pilot_config):
    one_gb = deadlines.stage_deadline([10**9])
    assert one_gb == deadlines.STAGE_SETUP_S + 3 * (400 + 1000 + 5 + 30)
    assert deadlines.stage_deadline([10**9, 10**9], endpoints=2) == deadlines.STAGE_SETUP_S + 4 * (one_gb - 120)
    assert deadlines.payload_deadline(3600, None) == 3600 + deadlines.PAYLOAD_MARGIN_S
    assert deadlines.payload_deadline(3600, 600) == 600 + deadlines.PAYLOAD_MARGIN_S
    assert deadlines.payload_deadline(None, None) == deadlines.PAYLOAD_NO_LIMIT_S + deadlines.PAYLOAD_MARGIN_S
    assert deadlines.payload_deadline(0, -50) == deadlines.PAYLOAD_MARGIN_S  # the slot is over already
    log_job = Job(panda_id=JOB, attempt_nr=1, transformation="bash", log=FileSpec(lfn="l.tgz", scope="s"))
    run = JobRun(log_job, pilot_config, None, outbox=None)  # type: ignore[arg-type]
    assert run._stage_deadline({"log": {}}, 1) == deadlines.stage_deadline([deadlines.LOG_SIZE_GUESS], 2)
    assert run.payload_deadline() == deadlines.PAYLOAD_NO_LIMIT_S + deadlines.PAYLOAD_MARGIN_S
