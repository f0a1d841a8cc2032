"""The HTTP side both dialects share: credentials on every call, retries by the policy of each kind
of call (nodepilot/retry.py), reply size limits, TLS refusals told apart from network trouble, answers
that are not from a PanDA server told as such, and reply decoding helpers."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from nodepilot import retry
from nodepilot.panda.auth import Credentials, context_for, current_credentials, ssl_cause, tls_refusal
from nodepilot.panda.errors import ServerError

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 50 * 1024 * 1024
PROBE_TIMEOUT_S = 30.0
KEPT_CLIENTS = 2  # connection pools kept per client: the current TLS identity and the one before


class HttpStatusError(ServerError):
    """An HTTP status outside 2xx, after the retries that apply to it."""

    def __init__(self, message: str, status: int, retryable: bool, refused: bool = False,
                 retry_after: float = 0.0) -> None:
        super().__init__(message, retryable=retryable, refused=refused)
        self.status, self.retry_after = status, retry_after


# the policy of each server method, both dialects (docs/operations.md "Retries"); others: OTHER_CALL
METHOD_POLICIES = {
    # the pilot retries acquisitions (retry.ACQUIRE) and the outbox updates (retry.UPDATE_DELIVERY)
    "acquire_jobs": retry.SINGLE, "getJob": retry.SINGLE, "update_job": retry.SINGLE, "updateJob": retry.SINGLE,
    "acquire_event_ranges": retry.EVENTS, "getEventRanges": retry.EVENTS,
    "update_event_ranges": retry.EVENTS, "updateEventRanges": retry.EVENTS,
    "get_event_range_statuses": retry.EVENTS,
    # statistics the server keeps: not worth a pause of the pilot
    "update_worker_status": retry.SINGLE, "updateWorkerPilotStatus": retry.SINGLE,
    "update_worker_node": retry.SINGLE, "update_worker_node_gpu": retry.SINGLE,
}

# statuses that say "this is not a PanDA server (or not this URL)": no later attempt can mend them
NOT_PANDA = {404: "no such URL", 405: "method not allowed", 501: "not implemented"}


_FORBIDDEN_METHOD = re.compile(rb"^\s*ERROR : method (\w+) is forbidden")


@dataclass
class Reply:
    status: int
    content: bytes
    headers: httpx.Headers


def snippet(content: bytes, limit: int = 200) -> str:
    text = content[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split()) + ("..." if len(content) > limit else "")


def decode_value(value: Any) -> Any:
    """A value that may arrive encoded as text (JSON, or Python's repr in URL-encoded replies)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def parse_json_object(what: str, content: bytes) -> dict[str, Any]:
    """A JSON object, whatever the Content-Type says (the real server labels JSON text/plain). Any
    other reply is not the PanDA protocol: final (retrying cannot mend what answered)."""
    try:
        reply = json.loads(content)
    except ValueError:
        raise ServerError(f"{what}: reply is not JSON, not the PanDA protocol (without Accept: "
                          f"application/json the server answers in text): {snippet(content)!r}") from None
    if not isinstance(reply, dict):
        raise ServerError(f"{what}: reply is not a JSON object, not the PanDA protocol: {snippet(content)!r}")
    return reply


def _dialect_advice(url: str, method: str) -> str:
    """What a 403 "method <m> is forbidden" means: the server lacks that method, so the other
    dialect is the one to speak (a server without the legacy API answers every legacy call so)."""
    if "/server/panda/" in url:
        return f"this server has no legacy API (it refuses {method}): use --api v1"
    return f"this server has no API v1 method {method} (an older server?): use --api legacy"


def answered_by(url: str, reply: Reply) -> str:
    """Who answered, as far as the reply tells: the URL and its Server and Content-Type headers."""
    parts = [f"{name} {reply.headers[name]!r}" for name in ("Server", "Content-Type") if reply.headers.get(name)]
    return f"{url} ({', '.join(parts)})" if parts else url


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ServerError) and exc.retryable


def _retry_after(value: str) -> float:
    return float(value) if value.isdigit() else 0.0


class PandaHttp:
    """POSTs to one PanDA server. Each attempt takes the credentials as they are then. Each call is
    retried by the policy its caller names; ``timeout`` (one attempt), ``retries`` (attempts after
    the first) and ``backoff_s`` (the first pause), when given, replace the policies' own."""

    def __init__(self, base_url: str, timeout: float | None = None, retries: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, backoff_s: float | None = None,
                 ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.ca_file = ca_file
        self._transport = transport
        self._https = self.base_url.startswith("https")
        self._clients: dict[ssl.SSLContext | None, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # --- one connection pool per TLS identity ------------------------------------------------------
    async def _client(self, creds: Credentials) -> httpx.AsyncClient:
        context = context_for(creds) if self._https else None
        client = self._clients.pop(context, None)
        if client is None:
            client = httpx.AsyncClient(timeout=None, transport=self._transport, follow_redirects=False,
                                       verify=context if context is not None else False)
        self._clients[context] = client  # most recent last
        while len(self._clients) > KEPT_CLIENTS:  # a renewed proxy: the pool of an old one is idle by now
            stale = next(iter(self._clients))
            await self._clients.pop(stale).aclose()
        return client

    # --- calls ------------------------------------------------------------------------------------
    def policy(self, policy: retry.Policy) -> retry.Policy:
        """The policy of one kind of call, with this client's overrides."""
        attempts = None if self.retries is None else self.retries + 1
        return policy.but(attempts=attempts, first_s=self.backoff_s, attempt_timeout_s=self.timeout)

    async def post(self, url: str, payload: bytes, headers: dict[str, str], what: str,
                   policy: retry.Policy | None = None, retry_500: bool = True) -> Reply:
        """POST, retried by ``policy`` (by default the server method's, METHOD_POLICIES) on connection
        trouble, time-outs, 5xx (not 501) and 429. A 2xx reply is returned; anything else raises
        ServerError (HttpStatusError for an HTTP status)."""
        return await self._request("POST", url, payload, headers, what, policy, retry_500)

    async def get(self, url: str, params: list[tuple[str, str]], headers: dict[str, str], what: str,
                  policy: retry.Policy | None = None) -> Reply:
        """GET with URL-encoded parameters (lists as repeated keys), retried as a POST is."""
        url = f"{url}?{urlencode(params)}" if params else url
        return await self._request("GET", url, b"", headers, what, policy, True)

    async def _request(self, method: str, url: str, payload: bytes, headers: dict[str, str], what: str,
                       policy: retry.Policy | None, retry_500: bool) -> Reply:
        if policy is None:
            policy = METHOD_POLICIES.get(url.partition("?")[0].rpartition("/")[2], retry.OTHER_CALL)

        async def attempt(timeout: float) -> Reply:
            creds = current_credentials(self.ca_file)
            return await self._attempt(method, url, payload, headers, what, creds, retry_500, timeout)

        return await retry.call(self.policy(policy), attempt, what, _retryable,
                                lambda exc: getattr(exc, "retry_after", 0.0))

    async def _attempt(self, method: str, url: str, payload: bytes, headers: dict[str, str], what: str,
                       creds: Credentials, retry_500: bool, timeout: float) -> Reply:
        try:
            client = await self._client(creds)
            async with asyncio.timeout(timeout):
                reply = await self._send(client, method, url, payload, {**headers, **creds.headers()})
        except ServerError:
            raise
        except httpx.UnsupportedProtocol as exc:
            raise ServerError(f"{what}: {exc}") from None
        except (httpx.TransportError, TimeoutError, ssl.SSLError) as exc:
            # a TLS alert arriving after the handshake (TLS 1.3 "certificate required") comes out of
            # httpx's read as the bare ssl.SSLError
            raise await self._transport_error(what, exc, creds, timeout) from None
        except httpx.HTTPError as exc:  # undecodable content, too many redirects
            raise ServerError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from None
        if 200 <= reply.status < 300:
            return reply
        raise self._status_error(what, url, reply, creds, retry_500)

    async def _send(self, client: httpx.AsyncClient, method: str, url: str, payload: bytes,
                    headers: dict[str, str]) -> Reply:
        async with client.stream(method, url, content=payload or None, headers=headers) as resp:
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_REPLY_BYTES:
                raise ServerError(f"reply of {length} bytes is larger than {MAX_REPLY_BYTES} bytes")
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise ServerError(f"reply larger than {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
            return Reply(resp.status_code, b"".join(chunks), resp.headers)

    @staticmethod
    def _status_error(what: str, url: str, reply: Reply, creds: Credentials, retry_500: bool) -> HttpStatusError:
        status = reply.status
        forbidden = _FORBIDDEN_METHOD.match(reply.content) if status == 403 else None
        if forbidden:  # panda-server's answer to a method it does not have, whoever asks
            return HttpStatusError(f"{what}: {_dialect_advice(url, forbidden[1].decode())} "
                                   f"(HTTP 403: {snippet(reply.content)})", status, retryable=False, refused=True)
        if status in (401, 403):
            return HttpStatusError(f"{what}: the server refused {creds.describe()}: HTTP {status}: "
                                   f"{snippet(reply.content)}", status, retryable=False, refused=True)
        if status in NOT_PANDA:
            return HttpStatusError(f"{what}: {answered_by(url, reply)} answered HTTP {status} ({NOT_PANDA[status]}): "
                                   f"not a PanDA server at this URL, not retried: {snippet(reply.content)}", status,
                                   retryable=False)
        retryable = (status >= 500 and (retry_500 or status != 500)) or status == 429
        return HttpStatusError(f"{what}: HTTP {status}: {snippet(reply.content)}", status, retryable=retryable,
                               retry_after=_retry_after(reply.headers.get("retry-after", "")))

    async def _transport_error(self, what: str, exc: Exception, creds: Credentials, timeout: float) -> ServerError:
        refusal = tls_refusal(exc, creds)
        if refusal:
            message, refused = refusal
            return ServerError(f"{what}: {message}", retryable=False, refused=refused)
        if (self._https and self._transport is None and creds.proxy
                and (ssl_cause(exc) is not None or isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError))
                and await self._certificate_refused(creds)):
            detail = str(ssl_cause(exc) or exc) or "connection closed"
            return ServerError(f"{what}: the server refused the client certificate X509_USER_PROXY={creds.proxy}: "
                               f"it closes TLS connections that present it and accepts them without it "
                               f"({type(exc).__name__}: {detail})", retryable=False, refused=True)
        detail = str(exc) or (f"no answer within {timeout:.1f} s" if isinstance(exc, TimeoutError) else "")
        return ServerError(f"{what}: {type(exc).__name__}: {detail or 'timed out'}", retryable=True)

    async def _certificate_refused(self, creds: Credentials) -> bool:
        """A server that refuses a client certificate in TLS 1.3 (or without sending an alert) just
        closes the connection, which also happens on network trouble. Tell them apart: connect
        again with the certificate and without it (a GET of the server root: any answer will do)."""
        return not await self._answers(creds, True) and await self._answers(creds, False)

    async def _answers(self, creds: Credentials, with_proxy: bool) -> bool:
        try:
            context = context_for(creds, with_proxy=with_proxy)
            async with httpx.AsyncClient(verify=context, timeout=min(self.timeout or PROBE_TIMEOUT_S,
                                                                     PROBE_TIMEOUT_S)) as probe:
                await probe.get(f"{self.base_url}/")
        except (httpx.HTTPError, ServerError):
            return False
        return True
