"""The services' small HTTP APIs: Starlette routes that answer JSON, and uvicorn's settings for them.

The services' APIs have a handful of routes each, called by the pilot's own tools over Unix sockets
(and the monitor's read-only page over loopback). FastAPI, which ``nodepilot serve`` and the
front-end keep for their public APIs and OpenAPI documents, would cost every pilot process about
8 MB and 150 ms at start-up for its OpenAPI models and validation machinery. Starlette, the toolkit
FastAPI is built on, serves these routes with the same request and response objects. Errors answer
as FastAPI's do: ``{"detail": ...}`` with the status (404 unknown path or job, 405 wrong method,
422 a malformed parameter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

N = TypeVar("N", int, float)
Endpoint = Callable[[Request], Awaitable[Any]]


def json_route(path: str, endpoint: Endpoint, methods: Sequence[str] = ("GET",)) -> Route:
    """A route whose endpoint's answer is sent as JSON (a ``Response`` it returns is sent as it is)."""

    async def answer(request: Request) -> Response:
        result = await endpoint(request)
        return result if isinstance(result, Response) else JSONResponse(result)

    return Route(path, answer, methods=list(methods))


async def _error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def api_app(routes: list[BaseRoute]) -> Starlette:
    return Starlette(routes=routes, exception_handlers={HTTPException: _error})


def number(text: str | None, name: str, kind: type[N], default: N | None = None) -> N:
    """A path or query parameter as a number; a missing or malformed one is a 422."""
    if text is None:
        if default is None:
            raise HTTPException(422, f"{name} is required")
        return default
    try:
        return kind(text)
    except ValueError:
        raise HTTPException(422, f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"not {text[:50]!r}") from None


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for one of our servers, loaded: HTTP/1.1 by h11, no websockets, no lifespan,
    no logging set-up of uvicorn's own (its records go through the pilot's handlers)."""
    config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off", http="h11", ws="none",
                            **options)
    config.load()
    return config
