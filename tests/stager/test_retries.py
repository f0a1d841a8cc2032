"""Retries, endpoint order and concurrency bounds of the stager, in-process with test-only movers.

The stager's request handling runs in this process (``StagerService._result``) on a real Redis, with
movers for made-up schemes injected into the mover registry: they fail on demand and record what
they were asked, so every path of the retry logic is exercised exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from nodepilot.config import PilotConfig
from services.stager.movers.base import Mover, Reason, TransferError, mover_classes
from services.stager.paths import deterministic_path
from services.stager.retry import backoff_delay
from services.stager.service import StagerService
from services.stager.settings import StagerSettings

FAST = {"attempts": 3, "backoff_s": 0.01, "backoff_cap_s": 0.02}


class ScriptedMover(Mover):
    """Each URL's attempts take their outcome from ``script[url]`` in turn (default: success)."""

    schemes = ("scripted",)
    script: ClassVar[dict[str, list[TransferError | None]]] = {}
    calls: ClassVar[list[str]] = []

    async def copy_in(self, src_url, dst_path, expected, expected_size, progress):
        return self._next(src_url, Path(dst_path))

    async def copy_out(self, src_path, dst_url, progress):
        return self._next(dst_url, None)

    def _next(self, url: str, dst: Path | None) -> tuple[int, str]:
        self.calls.append(url)
        outcomes = self.script.get(url) or [None]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if outcome is not None:
            raise outcome
        if dst is not None:
            dst.write_bytes(b"x")
        return 1, "00620062"


class SlowMover(Mover):
    """Holds each copy until released; counts how many run at once."""

    schemes = ("slow",)
    lock = threading.Lock()
    now = 0
    peak = 0

    async def copy_out(self, src_path, dst_url, progress):
        with SlowMover.lock:
            SlowMover.now += 1
            SlowMover.peak = max(SlowMover.peak, SlowMover.now)
        try:
            await asyncio.sleep(0.05)
        finally:
            with SlowMover.lock:
                SlowMover.now -= 1
        return 1, "00620062"


@pytest.fixture
def test_movers() -> Iterator[None]:
    registry = mover_classes()
    registry.update({"scripted": ScriptedMover, "other": ScriptedMover, "slow": SlowMover})
    ScriptedMover.script, ScriptedMover.calls = {}, []
    SlowMover.now = SlowMover.peak = 0
    yield
    for scheme in ("scripted", "other", "slow"):
        registry.pop(scheme, None)


def transient(diag: str = "connection refused") -> TransferError:
    return TransferError(Reason.IO, diag, transient=True)


def final(reason: str = Reason.IO, diag: str = "permission denied") -> TransferError:
    return TransferError(reason, diag)


def run_request(cfg: PilotConfig, kind: str, files: list[dict], endpoints: list[str], **extra) -> dict:
    work = Path(cfg.work_dir) / "PanDA_Pilot-7"
    work.mkdir(exist_ok=True)
    for f in files:
        if kind == "stageout":
            (work / f["lfn"]).write_bytes(b"x")
    message = {"kind": kind, "job_id": 7, "request_id": f"7:{kind}", "workdir": str(work), "files": files,
               "endpoints": [{"name": name.upper(), "url": f"{name}://se/{name}"} for name in endpoints], **extra}

    async def go() -> dict:
        stager = StagerService(cfg)
        try:
            return await stager._result(kind, 7, message)
        finally:
            await stager.redis.aclose()

    return asyncio.run(go())


def url(endpoint: str, lfn: str, scope: str = "s") -> str:
    return f"{endpoint}://se/{endpoint}/{deterministic_path(scope, lfn)}"


def fin(lfn: str) -> dict:
    return {"lfn": lfn, "scope": "s", "guid": "g", "fsize": 1, "checksum": None}


def test_backoff_doubles_up_to_the_cap_with_jitter():
    assert [backoff_delay(n, 1.0, 30.0, rng=lambda: 0.999999) for n in (1, 2, 3, 6, 10)] == pytest.approx(
        [1, 2, 4, 30, 30], rel=1e-5)
    assert [backoff_delay(n, 1.0, 30.0, rng=lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_settings_from_queue_data_fall_back_on_bad_values(pilot_config):
    queue = pilot_config.queuedata
    queue.stager = {"attempts": 5, "backoff_s": "soon", "files_per_request": 0, "transfers_per_pilot": 3,
                    "trace_url": 42}
    queue.allow_alt_stageout, queue.direct_access_lan = "True", "false"
    s = StagerSettings.from_queue(queue)
    assert (s.attempts, s.backoff_s, s.files_per_request, s.transfers_per_pilot) == (5, 1.0, 4, 3)
    assert s.trace_url == "" and s.allow_alt_stageout is True and s.direct_access_lan is False


def test_transient_errors_are_retried_then_succeed(pilot_config, redis_url, test_movers):
    pilot_config.queuedata.stager = FAST
    ScriptedMover.script[url("scripted", "a")] = [transient("reset by peer"), transient(), None]
    event = run_request(pilot_config, "stagein", [fin("a")], ["scripted"])
    f = event["files"][0]
    assert event["ok"] is True and f["attempts"] == 3 and f["endpoint"] == "SCRIPTED"
    assert "primary endpoint SCRIPTED succeeded at attempt 3 after: connection refused" in f["diag"]
    assert ScriptedMover.calls == [url("scripted", "a")] * 3


def test_retries_are_bounded_then_the_next_endpoint_is_tried(pilot_config, redis_url, test_movers):
    pilot_config.queuedata.stager = FAST
    first = url("scripted", "a")
    ScriptedMover.script[first] = [transient("server down")]
    event = run_request(pilot_config, "stagein", [fin("a")], ["scripted", "other"])
    f = event["files"][0]
    assert event["ok"] is True and f["endpoint"] == "OTHER" and f["attempts"] == 4
    assert ScriptedMover.calls == [first] * 3 + [url("other", "a")]
    assert "primary endpoint SCRIPTED (3 attempts): server down" in f["diag"]
    assert "read from alternative endpoint OTHER" in f["diag"]


def test_final_errors_go_to_the_next_endpoint_at_once(pilot_config, redis_url, test_movers):
    pilot_config.queuedata.stager = FAST
    ScriptedMover.script[url("scripted", "a")] = [final(Reason.MISSING, "no such file")]
    ScriptedMover.script[url("other", "a")] = [final(Reason.ADLER32, "adler32 mismatch")]
    event = run_request(pilot_config, "stagein", [fin("a")], ["scripted", "other"])
    f = event["files"][0]
    assert event["ok"] is False and f["attempts"] == 2 and event["error_code"] == 1171  # the last endpoint's
    assert ScriptedMover.calls == [url("scripted", "a"), url("other", "a")]
    assert f["diag"] == "primary endpoint SCRIPTED: no such file; alternative endpoint OTHER: adler32 mismatch"


def test_a_full_local_disk_stops_at_once(pilot_config, redis_url, test_movers):
    pilot_config.queuedata.stager = FAST
    ScriptedMover.script[url("scripted", "a")] = [final(Reason.NOSPACE, "no space left on device")]
    event = run_request(pilot_config, "stagein", [fin("a")], ["scripted", "other"])
    assert event["error_code"] == 1098 and ScriptedMover.calls == [url("scripted", "a")]
    assert event["diag"] == "primary endpoint SCRIPTED: no space left on device"


def test_a_mover_bug_fails_the_attempt_not_the_request(pilot_config, redis_url, test_movers):
    ScriptedMover.script[url("scripted", "a")] = [ZeroDivisionError("bug")]  # type: ignore[list-item]
    event = run_request(pilot_config, "stagein", [fin("a"), fin("b")], ["scripted"])
    assert [f["status"] for f in event["files"]] == ["failed", "done"]
    assert event["error_code"] == 1099 and "unexpected error: ZeroDivisionError('bug')" in event["diag"]


@pytest.mark.parametrize(("per_request", "per_pilot"), [(4, 8), (4, 2), (1, 8)])
def test_concurrency_bounds_per_request_and_per_pilot(pilot_config, redis_url, test_movers, per_request, per_pilot):
    pilot_config.queuedata.stager = {"files_per_request": per_request, "transfers_per_pilot": per_pilot}
    work = Path(pilot_config.work_dir)

    async def go() -> list[dict]:
        stager = StagerService(pilot_config)
        requests = []
        for job_id in (1, 2):  # two requests at once: the per-pilot bound spans both
            wd = work / f"PanDA_Pilot-{job_id}"
            wd.mkdir()
            files = [{"lfn": f"o{i}", "scope": "s"} for i in range(6)]
            for f in files:
                (wd / f["lfn"]).write_bytes(b"x")
            requests.append({"kind": "stageout", "job_id": job_id, "request_id": f"{job_id}:out",
                             "workdir": str(wd), "files": files, "endpoints": [{"name": "SLOW", "url": "slow://x"}]})
        try:
            return await asyncio.gather(*(stager._result("stageout", m["job_id"], m) for m in requests))
        finally:
            await stager.redis.aclose()

    started = time.monotonic()
    events = asyncio.run(go())
    assert all(e["ok"] for e in events)
    assert SlowMover.peak == min(per_pilot, 2 * per_request)  # two requests of 6 files
    assert time.monotonic() - started < 10
