"""HTTP clients for the services' Unix sockets."""

from __future__ import annotations

from pathlib import Path

import httpx


def uds_client(socket_path: str | Path, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                        base_url="http://nodepilot", timeout=timeout)


def async_uds_client(socket_path: str | Path, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
                             base_url="http://nodepilot", timeout=timeout)
