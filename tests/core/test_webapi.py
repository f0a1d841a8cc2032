"""The services' small APIs (nodepilot/webapi.py): JSON answers, and errors as FastAPI's look."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from nodepilot.webapi import api_app, json_route, number


async def _item(request: Request) -> dict[str, Any]:
    item = number(request.path_params["item"], "item", int)
    if item > 9:
        raise HTTPException(404, f"no item {item}")
    return {"item": item, "weight": number(request.query_params.get("weight"), "weight", float, 1.5)}


def _ask(method: str, path: str) -> httpx.Response:
    app = api_app([json_route("/items/{item}", _item, methods=("POST",))])

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, path)

    return asyncio.run(go())


@pytest.mark.parametrize(("method", "path", "status", "answer"), [
    ("POST", "/items/3", 200, {"item": 3, "weight": 1.5}),
    ("POST", "/items/3?weight=2", 200, {"item": 3, "weight": 2.0}),
    ("POST", "/items/x", 422, {"detail": "item must be an integer, not 'x'"}),
    ("POST", "/items/3?weight=heavy", 422, {"detail": "weight must be a number, not 'heavy'"}),
    ("POST", "/items/12", 404, {"detail": "no item 12"}),
    ("GET", "/items/3", 405, {"detail": "Method Not Allowed"}),
    ("POST", "/nowhere", 404, {"detail": "Not Found"}),
])
def test_answers_and_errors(method: str, path: str, status: int, answer: dict[str, Any]):
    reply = _ask(method, path)
    assert (reply.status_code, reply.json()) == (status, answer)
