"""The retry policies' bounds against real servers on loopback: a server that is down, one that
never answers, and answers that no retry can mend (HTTP 501, 404, a reply that is not the PanDA
protocol), which end at once with a line saying what answered."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodepilot import retry
from nodepilot.panda.api_v1 import ApiV1Client
from nodepilot.panda.errors import ServerError
from nodepilot.panda.legacy import LegacyClient
from tests.panda.mock import run


class Counting(BaseHTTPRequestHandler):
    """Answers POSTs with the class's status and body; counts them. No do_POST for status 501:
    the standard library's own "Unsupported method" answer, as a plain web server gives."""

    status, body, requests = 200, b"", 0

    def log_message(self, *args: object) -> None:
        pass


def _serve(status: int, body: bytes) -> tuple[ThreadingHTTPServer, type[Counting]]:
    def do_post(handler: Counting) -> None:
        type(handler).requests += 1
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    attrs = {} if status == 501 else {"do_POST": do_post}
    handler = type("Handler", (Counting,), attrs)
    if status == 501:
        original = handler.send_error

        def send_error(self: Counting, *args: object, **kwargs: object) -> None:
            type(self).requests += 1
            original(self, *args, **kwargs)
        handler.send_error = send_error  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture
def http_server() -> Iterator[object]:
    started: list[ThreadingHTTPServer] = []

    def start(status: int, body: bytes = b"") -> tuple[str, type[Counting]]:
        server, handler = _serve(status, body)
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client_class", [ApiV1Client, LegacyClient])
@pytest.mark.parametrize("status", [501, 404])
def test_a_status_no_retry_mends_ends_at_once_saying_what_answered(http_server, client_class, status: int):
    url, handler = http_server(status, b"<html>no such page</html>")
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        run(client_class(url).acquire_event_ranges(1, 2, None, 3))  # event calls retry by policy
    assert time.monotonic() - t0 < 2
    assert handler.requests == 1 and not err.value.retryable
    message = str(err.value)
    assert f"HTTP {status}" in message and "not a PanDA server" in message and url in message
    assert "Server 'BaseHTTP" in message  # what answered


def test_a_reply_that_is_not_the_panda_protocol_ends_at_once(http_server):
    url, handler = http_server(200, b"<html><body>Welcome to nginx!</body></html>")
    with pytest.raises(ServerError) as err:
        run(ApiV1Client(url).acquire_event_ranges(1, 2, None, 3))
    assert handler.requests == 1 and not err.value.retryable
    assert "not the PanDA protocol" in str(err.value) and "nginx" in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_acquisition_and_update_are_one_http_attempt_each():
    """Their retries belong to the pilot (retry.ACQUIRE) and the outbox (retry.UPDATE_DELIVERY)."""
    client = ApiV1Client(f"http://127.0.0.1:{_closed_port()}")
    for call in (client.acquire_job({"siteName": "Q"}), client.update_job({"jobId": 1, "state": "running"})):
        t0 = time.monotonic()
        with pytest.raises(ServerError) as err:
            run(call)
        assert err.value.retryable and "ConnectError" in str(err.value)
        assert time.monotonic() - t0 < 1  # one attempt, no pause


def test_a_down_server_costs_the_acquisition_policy_and_no_more(caplog: pytest.LogCaptureFixture):
    policy = retry.ACQUIRE.but(first_s=0.1, cap_s=0.4)
    client = ApiV1Client(f"http://127.0.0.1:{_closed_port()}")
    calls = 0

    async def attempt(timeout: float) -> object:
        nonlocal calls
        calls += 1
        return await client.acquire_job({"siteName": "Q"})

    t0 = time.monotonic()
    with caplog.at_level("WARNING"), pytest.raises(ServerError):
        run(retry.call(policy, attempt, "acquire_job", lambda e: isinstance(e, ServerError) and e.retryable))
    assert calls == retry.ACQUIRE.attempts
    assert time.monotonic() - t0 < 0.1 + 0.2 + 0.4 + 1  # the pauses, nothing more
    said = [r.getMessage() for r in caplog.records if "ConnectError" in r.getMessage()]
    assert said and "attempt 1 of 4" in said[0] and "budget" in said[0]  # said at the first failure


def test_a_server_that_never_answers_costs_the_budget_and_no_more():
    async def main() -> float:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # holds the connection, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        policy = retry.EVENTS.but(budget_s=1.5, first_s=0.1, cap_s=0.1)  # attempts of 30 s each
        client = ApiV1Client(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        try:
            with pytest.raises(ServerError) as err:
                await client._http.post(f"http://127.0.0.1:{port}/api/v1/event/acquire_event_ranges", b"{}", {},
                                        "acquire_event_ranges", policy=policy)
            assert err.value.retryable
            return time.monotonic() - t0
        finally:
            await client.aclose()
            server.close()

    assert 1.4 < asyncio.run(main()) < 3


def test_policies_have_budgets_and_bounded_pauses():
    for policy in retry.ALL:
        assert 0 < policy.budget_s <= 3 * 3600 and policy.attempts >= 1
        assert all(policy.pause(n) <= policy.cap_s for n in range(1, 40))
        assert policy.attempt_timeout_s > 0


def test_a_worker_that_keeps_failing_is_given_up_after_its_budget():
    policy = retry.EVENT_REPORTS.but(budget_s=0.5, first_s=0.05, cap_s=0.1)
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("source away")

    t0 = time.monotonic()
    assert asyncio.run(retry.keep_running(policy, broken, "the reporter")) is False
    assert 0.5 <= time.monotonic() - t0 < 1.0 and 4 <= runs <= 15  # growing pauses, not one every 2 s
