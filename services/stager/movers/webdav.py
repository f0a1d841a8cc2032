"""The HTTP/WebDAV mover: ``https://``, ``davs://`` (HTTPS), ``http://``, ``dav://`` (HTTP), through httpx.

GET and PUT are streamed (the PUT body is a generator of chunks, with its Content-Length); missing
parent collections are made with MKCOL; an upload goes to a temporary name and is renamed with MOVE.
The stored copy is checked with the server's adler32 when it answers ``Want-Digest`` (RFC 3230:
dCache, EOS, XRootD's HTTP); servers that do not (wsgidav, nginx) get the copy re-read by GET,
so an upload reads the file twice there.

TLS: the CA directory ``X509_CERT_DIR`` (else the system's), the client certificate
``X509_USER_PROXY`` when set. A bearer token from ``BEARER_TOKEN`` or the file ``BEARER_TOKEN_FILE``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.stager.movers.base import Reason, RemoteStat, Source, TransferError
from services.stager.movers.stream import StreamMover

SCHEME_OF = {"https": "https", "davs": "https", "http": "http", "dav": "http"}
TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class HTTPFailure(Exception):
    def __init__(self, method: str, status: int, text: str) -> None:
        super().__init__(f"{method} answered {status} {text}".strip())
        self.status = status


def http_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = SCHEME_OF.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise TransferError(Reason.PROTOCOL, f"not an HTTP/WebDAV URL: {url}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


@functools.cache
def _tls_context(ca_dir: str | None, proxy: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(capath=ca_dir) if ca_dir else ssl.create_default_context()
    if proxy:
        context.load_cert_chain(proxy)
    return context


def _token() -> str | None:
    if token := os.environ.get("BEARER_TOKEN"):
        return token.strip()
    if path := os.environ.get("BEARER_TOKEN_FILE"):
        with contextlib.suppress(OSError), open(path) as fh:
            return fh.read().strip()
    return None


class WebDAVMover(StreamMover):
    schemes = ("https", "davs", "http", "dav")
    supports_direct_access = True
    verification = "server adler32 (Want-Digest) or, where the server gives none, stored copy re-read by GET"

    def _client(self) -> Any:
        import httpx

        headers = {"Accept-Encoding": "identity"}
        if token := _token():
            headers["Authorization"] = f"Bearer {token}"
        verify = _tls_context(os.environ.get("X509_CERT_DIR"), os.environ.get("X509_USER_PROXY"))
        return httpx.Client(headers=headers, verify=verify, follow_redirects=True,
                            timeout=httpx.Timeout(self.call_timeout_s, connect=10.0))

    @contextlib.contextmanager
    def open_source(self, url: str) -> Iterator[Source]:
        with self._client() as client, client.stream("GET", http_url(url)) as reply:
            _check(reply, "GET")
            length = reply.headers.get("Content-Length")
            yield Source(int(length) if length and length.isdigit() else None, reply.iter_bytes(self.chunk_size))

    def upload(self, url: str, chunks: Iterator[bytes], size: int) -> None:
        target = http_url(url)
        with self._client() as client:
            self._make_parents(client, target)
            reply = client.put(target, content=chunks, headers={"Content-Length": str(size)})
            _check(reply, "PUT")

    def _make_parents(self, client: Any, url: str) -> None:
        """MKCOL the missing collections above ``url``: the nearest first, its parents only when it
        is refused for want of them (409), so an existing directory costs one request."""
        parts = urlsplit(url)
        parent = parts.path.rstrip("/").rpartition("/")[0]
        if not parent:
            return
        collection = urlunsplit((parts.scheme, parts.netloc, parent + "/", "", ""))
        reply = client.request("MKCOL", collection)
        if reply.status_code == 409:
            self._make_parents(client, collection)
            reply = client.request("MKCOL", collection)
        if reply.status_code not in (200, 201, 405):  # 405: it exists
            _check(reply, "MKCOL")

    def rename(self, src_url: str, dst_url: str) -> None:
        with self._client() as client:
            reply = client.request("MOVE", http_url(src_url),
                                   headers={"Destination": http_url(dst_url), "Overwrite": "T"})
            _check(reply, "MOVE")

    def remove(self, url: str) -> None:
        with self._client() as client:
            reply = client.delete(http_url(url))
            if reply.status_code != 404:
                _check(reply, "DELETE")

    def stored_adler32(self, url: str, cancel: threading.Event) -> str | None:
        return self._head(url).adler32 or super().stored_adler32(url, cancel)

    def remote_stat(self, url: str) -> RemoteStat:
        stat = self._head(url)
        return stat if stat.size >= 0 else super().remote_stat(url)

    def _head(self, url: str) -> RemoteStat:
        """Size (-1 when not given) and the server's adler32 if it answers ``Want-Digest``."""
        with self._client() as client:
            reply = client.head(http_url(url), headers={"Want-Digest": "adler32"})
            _check(reply, "HEAD")
        length = reply.headers.get("Content-Length", "")
        return RemoteStat(int(length) if length.isdigit() else -1, _adler32_of(reply.headers.get("Digest", "")))

    def classify(self, exc: Exception, what: str) -> TransferError:
        import httpx

        if isinstance(exc, HTTPFailure):
            diag = f"{what} failed: {exc}"
            if exc.status in (404, 410):
                return TransferError(Reason.MISSING, diag)
            if exc.status == 507:
                return TransferError(Reason.NOSPACE, diag)
            return TransferError(Reason.IO, diag, transient=exc.status in TRANSIENT_STATUSES)
        if isinstance(exc, httpx.TimeoutException):
            return TransferError(Reason.IO, f"{what} failed: server time-out ({type(exc).__name__})", transient=True)
        if isinstance(exc, httpx.TransportError):  # refused, reset, closed mid-body
            return TransferError(Reason.IO, f"{what} failed: {type(exc).__name__}: {exc}", transient=True)
        return TransferError(Reason.IO, f"{what} failed: {exc!r}")


def _check(reply: Any, method: str) -> None:
    if reply.status_code < 300:
        return
    text = reply.reason_phrase or ""
    with contextlib.suppress(Exception):
        reply.read()
        if reply.headers.get("Content-Type", "").startswith("text/plain"):
            text = " ".join(reply.text[:200].split())
    raise HTTPFailure(method, reply.status_code, text)


def _adler32_of(digest: str) -> str | None:
    """The adler32 in a ``Digest`` header (``adler32=0a1b2c3d``, or base64 of the 4 bytes as some servers send)."""
    for item in digest.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() != "adler32" or not value:
            continue
        value = value.strip()
        if len(value) == 8 and all(c in "0123456789abcdefABCDEF" for c in value):
            return value.lower()
        with contextlib.suppress(ValueError):
            raw = base64.b64decode(value, validate=True)
            if len(raw) == 4:
                return raw.hex()
    return None
