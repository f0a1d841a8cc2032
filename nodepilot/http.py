"""HTTP clients for the services' Unix sockets (no TLS there: building a context costs ~30 ms)."""

from __future__ import annotations

from pathlib import Path

import httpx


def uds_client(socket_path: str | Path, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path), verify=False),
                        base_url="http://nodepilot", timeout=timeout, verify=False)


def async_uds_client(socket_path: str | Path, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path), verify=False),
                             base_url="http://nodepilot", timeout=timeout, verify=False)
