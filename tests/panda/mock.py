"""Scripted PanDA servers for client tests (httpx.MockTransport): replies written by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from nodepilot.panda.api_v1 import ApiV1Client
from nodepilot.panda.legacy import LegacyClient

BASE = "https://panda.example.org:25443"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def text(body: bytes, status: int = 200, **headers: str) -> httpx.Response:
    """A reply labelled text/plain, as the real server labels its JSON too."""
    return httpx.Response(status, content=body, headers={"Content-Type": "text/plain", **headers})


class Recorder:
    """A MockTransport handler answering from a script of replies, remembering every request."""

    def __init__(self, *replies: httpx.Response | Exception | Callable[[], Any]) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return await reply()
        return reply

    def client(self, **kwargs: Any) -> ApiV1Client:
        return ApiV1Client(BASE, transport=httpx.MockTransport(self), backoff_s=0.001, **kwargs)

    def legacy(self, **kwargs: Any) -> LegacyClient:
        return LegacyClient(BASE, transport=httpx.MockTransport(self), backoff_s=0.001, **kwargs)

    def body(self, i: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[i].content)
