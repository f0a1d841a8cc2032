"""TLS for the local job server: a client certificate signed by the given CA, or a bearer token
listed in a file, as panda-server accepts an X.509 proxy or a token.

The TLS layer asks for a client certificate without requiring one (a presented certificate that
does not verify against the CA fails the handshake), unless told to require one (then a client
without one gets the TLS alert "certificate required", as from a server that takes no tokens);
the HTTP layer then lets a request through when it carries ``Authorization: Bearer <token>`` with
a token listed in the tokens file (read at each request, one token per line), or carries no token
and its connection presented a verified certificate. Anything else is answered as panda-server
answers a failed authentication: HTTP 403, ``text/plain``, ``ERROR : Token authentication failed.
<why>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import PlainTextResponse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
PeerKey = tuple[str, int]


@dataclass(frozen=True)
class TlsSettings:
    cert: Path
    key: Path
    ca: Path | None = None  # a CA file, or a hashed CA directory
    tokens: Path | None = None
    require_cert: bool = False  # the handshake fails without a client certificate (alert "certificate required")

    def __post_init__(self) -> None:
        if self.ca is None and self.tokens is None:
            raise ValueError("TLS needs a CA for client certificates (--ca) or a tokens file (--tokens), or both")
        if self.require_cert and self.ca is None:
            raise ValueError("requiring a client certificate needs the CA that signs them (--ca)")

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:  # ssl.SSLError is an OSError: a missing or unreadable file, or one that is no PEM
            context.load_cert_chain(self.cert, self.key)
        except OSError as exc:
            why = "not a PEM certificate and its key" if isinstance(exc, ssl.SSLError) else exc.strerror or exc
            raise ValueError(f"TLS: cannot load the certificate {self.cert} with the key {self.key}: {why}") from None
        if self.ca is not None:
            try:
                if self.ca.is_dir():
                    context.load_verify_locations(capath=str(self.ca))
                else:
                    context.load_verify_locations(cafile=str(self.ca))
            except OSError as exc:
                raise ValueError(f"TLS: cannot load the CA {self.ca}: {exc.strerror or exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED if self.require_cert else ssl.CERT_OPTIONAL
            context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS  # grid proxies are RFC 3820 proxy certificates
        return context


def _peer_key(address: Any) -> PeerKey | None:
    if isinstance(address, list | tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def recording_peer_certificates(base: type[asyncio.Protocol], peers: dict[PeerKey, dict[str, Any]]
                                ) -> type[asyncio.Protocol]:
    """The HTTP protocol class, also noting each connection's verified client certificate under the
    client address that the ASGI scope carries (uvicorn passes no certificate to the app)."""

    class PeerCertificateProtocol(base):  # type: ignore[valid-type, misc]
        _peer: PeerKey | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._peer = _peer_key(transport.get_extra_info("peername"))
            if self._peer is not None:
                peers[self._peer] = transport.get_extra_info("peercert") or {}
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peer is not None:
                peers.pop(self._peer, None)
            super().connection_lost(exc)

    return PeerCertificateProtocol


class _AlertingTls(sslproto.SSLProtocol):
    """asyncio's server-side TLS, except that a failed handshake first sends the alert that says why,
    as gunicorn or Apache in front of panda-server do (e.g. "certificate required"). asyncio drops the
    alert and resets the connection; here the alert is written, the connection half-closed, and it
    is closed when the client has read it (its EOF) or after ``ALERT_GRACE_S``: closing at once
    would reset the connection (the client's first request arrives meanwhile) and lose the alert."""

    ALERT_GRACE_S = 2.0
    _failed = False

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is None or self._transport is None:
            super()._on_handshake_complete(handshake_exc)
            return
        if self._failed:  # more data or the client's EOF after the alert: the close is already planned
            if handshake_exc is ConnectionResetError:
                super()._on_handshake_complete(handshake_exc)
            return
        self._failed = True
        with contextlib.suppress(Exception):
            self._process_outgoing()  # the alert is in the outgoing buffer
            self._transport.write_eof()
        self._loop.call_later(self.ALERT_GRACE_S, self._close_after_alert, handshake_exc)

    def _close_after_alert(self, handshake_exc: BaseException) -> None:
        if self._transport is not None:
            super()._on_handshake_complete(handshake_exc)


def terminating_tls(protocol_class: type[asyncio.Protocol], context: ssl.SSLContext) -> Callable[..., asyncio.Protocol]:
    """A protocol factory for uvicorn (``http_protocol_class``, with ``ssl`` off): TLS done by
    ``_AlertingTls`` around the HTTP protocol."""

    def build(*, _loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> asyncio.Protocol:
        loop = _loop or asyncio.get_running_loop()
        return _AlertingTls(loop, protocol_class(_loop=_loop, **kwargs), context, None, server_side=True)

    return build


def subject(cert: dict[str, Any]) -> str:
    return "/" + "/".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, peers: dict[PeerKey, dict[str, Any]], tokens: Path | None) -> None:
        self.app, self.peers, self.tokens = app, peers, tokens

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = _peer_key(scope.get("client"))
        refusal = self._refusal(scope, bool(self.peers.get(peer)) if peer else False)
        if refusal is not None:
            log.warning("%s %s from %s refused: %s", scope.get("method"), scope.get("path"), peer, refusal)
            reply = PlainTextResponse(f"ERROR : Token authentication failed. {refusal}", status_code=403)
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, verified_certificate: bool) -> str | None:
        """None when the request may pass, else why not. A token sent is always checked (a bad one
        is refused even over a connection with a good certificate, as on panda-server)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        authorization = headers.get("authorization", "").strip()
        if not authorization:
            return None if verified_certificate else "No client certificate and no bearer token"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Corrupted token. Not a bearer token"
        if self.tokens is None:
            return "Tokens are not accepted by this server"
        try:
            lines = self.tokens.read_text().splitlines()
        except OSError as exc:
            log.error("cannot read the tokens file: %s", exc)
            return "Tokens cannot be checked"
        known = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        token = token.strip()
        if any(hmac.compare_digest(token.encode(), k.encode()) for k in known):
            return None
        return "Invalid token"
