"""The one way tests wait for something that happens elsewhere (a process, a server, Redis): check
again and again for a bounded time, then fail the test saying what did not happen."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> T:
    """``check()``'s first true value; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)
    return value


async def wait_until_async(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                           interval: float = 0.01) -> Any:
    """``wait_until`` inside an event loop (the loop runs on while it waits); ``check`` may be a
    coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(interval)
