"""Every retry the pilot makes, in one place: one policy per kind of call, each with a total time
budget (docs/operations.md "Retries").

The loop itself is tenacity's (a well-kept library with asyncio support, a stop "before the next
pause would pass the budget" and retry predicates); this module holds the policies, the one back-off
formula (doubling, capped, scaled by a random factor in [0.5, 1) so that many callers failing
together do not retry in step) and the log lines. One rule keeps the bounds true: a call is retried
at one level only. Job acquisition is retried by the pilot and job updates by the outbox, so each
of their HTTP calls is a single attempt; the event range calls are retried by the HTTP client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """``attempts`` tries at most, none started once ``budget_s`` has passed since the first (nor
    one whose pause would pass it); one attempt lasts at most ``attempt_timeout_s`` and never past
    the budget; the pause before try n+1 is ``first_s * 2**(n-1)`` capped at ``cap_s``, jittered."""

    kind: str
    budget_s: float
    attempts: int
    first_s: float
    cap_s: float
    attempt_timeout_s: float

    def pause(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The pause before retry number ``retry`` (1 for the first)."""
        full = min(self.cap_s, self.first_s * 2 ** max(retry - 1, 0))
        return full * (0.5 + 0.5 * rng())

    def but(self, **changes: float | int | None) -> Policy:
        """This policy with some settings replaced (None leaves a setting as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# --- the policies (docs/operations.md lists them; change them there too) ---------------------------------
ACQUIRE = Policy("job acquisition", budget_s=60.0, attempts=4, first_s=2.0, cap_s=20.0, attempt_timeout_s=30.0)
SINGLE = Policy("one HTTP attempt (its caller retries)", budget_s=60.0, attempts=1, first_s=1.0, cap_s=1.0,
                attempt_timeout_s=60.0)
UPDATE_DELIVERY = Policy("job update delivery (outbox)", budget_s=3 * 3600.0, attempts=1 << 30, first_s=1.0,
                         cap_s=300.0, attempt_timeout_s=60.0)
EVENTS = Policy("event range call", budget_s=60.0, attempts=3, first_s=1.0, cap_s=10.0, attempt_timeout_s=30.0)
EVENT_REPORTS = Policy("event range reports", budget_s=600.0, attempts=1 << 30, first_s=2.0, cap_s=60.0,
                       attempt_timeout_s=60.0)
EVENT_FINAL = Policy("last event range reports of a job", budget_s=60.0, attempts=3, first_s=1.0, cap_s=4.0,
                     attempt_timeout_s=60.0)
OTHER_CALL = Policy("other server call", budget_s=30.0, attempts=2, first_s=1.0, cap_s=5.0, attempt_timeout_s=30.0)
TRANSFER = Policy("file transfer", budget_s=3600.0, attempts=3, first_s=1.0, cap_s=60.0, attempt_timeout_s=3600.0)
TRACE = Policy("transfer trace", budget_s=3600.0, attempts=1 << 30, first_s=1.0, cap_s=60.0, attempt_timeout_s=30.0)
EVENT_UPLOAD = Policy("event output upload", budget_s=600.0, attempts=1 << 30, first_s=2.0, cap_s=60.0,
                      attempt_timeout_s=600.0)

ALL = (ACQUIRE, SINGLE, UPDATE_DELIVERY, EVENTS, EVENT_REPORTS, EVENT_FINAL, OTHER_CALL, TRANSFER, TRACE,
       EVENT_UPLOAD)


class Budget:
    """The time left of one policy's budget, from its first attempt (a monotonic clock)."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.started = policy, time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return max(0.0, self.policy.budget_s - self.spent())

    def attempt_timeout(self) -> float:
        """One attempt's time-out: the policy's, and never past the budget (at least 0.1 s)."""
        return max(0.1, min(self.policy.attempt_timeout_s, self.left()))


async def call(policy: Policy, attempt: Callable[[float], Awaitable[T]], what: str,
               retryable: Callable[[BaseException], bool], retry_after: Callable[[BaseException], float] | None = None,
               ) -> T:
    """``await attempt(timeout)`` until it returns, raises what ``retryable`` says is final, or the
    policy's attempts or budget are spent (the last error is raised). ``retry_after``: a pause the
    other side asked for (HTTP Retry-After), honoured when longer than the policy's."""
    budget = Budget(policy)

    def wait(state: RetryCallState) -> float:
        pause = policy.pause(state.attempt_number)
        exc = state.outcome.exception() if state.outcome else None
        return max(pause, retry_after(exc)) if retry_after and exc is not None else pause

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s (attempt %d of %s, %s); retrying in %.1f s, %.0f s of its %.0f s budget left", exc,
                    state.attempt_number, policy.attempts if policy.attempts < 1 << 20 else "unbounded",
                    policy.kind, state.upcoming_sleep, budget.left(), policy.budget_s)

    retrying = AsyncRetrying(stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.budget_s),
                             wait=wait, retry=retry_if_exception(retryable), before_sleep=before_sleep,
                             reraise=True)
    async for trial in retrying:
        with trial:
            return await attempt(budget.attempt_timeout())
    raise AssertionError(f"{what}: unreachable")  # reraise=True: the last error leaves the loop


async def keep_running(policy: Policy, run: Callable[[], Awaitable[None]], what: str) -> bool:
    """A long-lived worker restarted after each failure, pausing by ``policy``; a worker that ran for
    longer than the policy's longest pause before it failed starts a new series. It is given up
    (False, with one error line) once its failures have lasted the policy's budget; True: it returned."""
    failures, series_start = 0, 0.0
    while True:
        started = time.monotonic()
        try:
            await run()
            return True
        except Exception:
            now = time.monotonic()
            if failures == 0 or now - started > policy.cap_s:
                failures, series_start = 0, started
            failures += 1
            if now - series_start >= policy.budget_s:
                log.exception("%s failed again: given up, its failures have lasted %.0f s (the %.0f s budget of %s)",
                              what, now - series_start, policy.budget_s, policy.kind)
                return False
            pause = policy.pause(failures)
            log.exception("%s failed (%d in a row): again in %.1f s", what, failures, pause)
        await asyncio.sleep(pause)
