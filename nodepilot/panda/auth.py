"""Credentials for the PanDA server (docs/protocol.md section 1), looked up anew for every call.

- An X.509 proxy (``X509_USER_PROXY``: certificate and key in one file) is presented as the TLS
  client certificate. Its TLS context is cached by the file's identity (path, inode, size, mtime),
  so a renewed proxy is used from the next call on.
- A bearer token is sent as ``Authorization: Bearer <token>`` with ``Origin: <vo>``: the token is
  the content of ``PANDA_AUTH_TOKEN_FILE``, read at each call, else ``PANDA_AUTH_TOKEN`` (which, as
  harvester sets it, may also name the token file: a path, or a name inside ``PANDA_AUTH_DIR``).
  The origin is ``PANDA_AUTH_VO``, else ``PANDA_AUTH_ORIGIN``.
- The server's certificate is verified against ``X509_CERT_DIR`` (a hashed CA directory) and/or
  ``X509_CERT_FILE`` or a CA file given to the client; with none of them, against certifi's CAs.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from nodepilot.panda.errors import ServerError

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    """What one call presents: a proxy file for TLS and/or a bearer token."""

    proxy: str | None = None
    token: str | None = None
    token_source: str = ""  # where the token came from, for messages
    origin: str | None = None
    cafile: str | None = None
    capath: str | None = None

    def headers(self) -> dict[str, str]:
        if not self.token:
            return {}
        return {"Authorization": f"Bearer {self.token}", **({"Origin": self.origin} if self.origin else {})}

    def describe(self) -> str:
        """The credentials sent, as a message names them."""
        sent = []
        if self.proxy:
            sent.append(f"the X.509 proxy X509_USER_PROXY={self.proxy}")
        if self.token:
            sent.append(f"the bearer token from {self.token_source}"
                        + (f" (Origin: {self.origin})" if self.origin else " (no PANDA_AUTH_VO/PANDA_AUTH_ORIGIN)"))
        return " and ".join(sent) or "no credential (neither X509_USER_PROXY nor PANDA_AUTH_TOKEN[_FILE] is set)"

    def describe_ca(self) -> str:
        places = [f"X509_CERT_FILE/CA file {self.cafile}" if self.cafile else "",
                  f"X509_CERT_DIR={self.capath}" if self.capath else ""]
        return " and ".join(p for p in places if p) or "the default CA bundle (set X509_CERT_DIR)"


def _read_token_file(path: str, source: str) -> str:
    try:
        with open(path, "rb") as fh:
            content = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ServerError(f"cannot read the token file {source}: {exc}", retryable=True) from exc
    if len(content) > MAX_TOKEN_BYTES:
        raise ServerError(f"the token file {source} is larger than {MAX_TOKEN_BYTES} bytes")
    token = content.decode("utf-8", errors="replace").strip()
    if not token:
        raise ServerError(f"the token file {source} is empty", retryable=True)
    return token


def _token(env: Mapping[str, str]) -> tuple[str | None, str]:
    token_file = env.get("PANDA_AUTH_TOKEN_FILE")
    if token_file:
        source = f"PANDA_AUTH_TOKEN_FILE={token_file}"
        return _read_token_file(token_file, source), source
    value = (env.get("PANDA_AUTH_TOKEN") or "").strip()
    if not value:
        return None, ""
    # harvester exports the token file's path, or its name in PANDA_AUTH_DIR; a token is never either
    candidate = Path(env["PANDA_AUTH_DIR"], value) if env.get("PANDA_AUTH_DIR") else Path(value)
    if "/" in value or env.get("PANDA_AUTH_DIR"):
        try:
            is_file = candidate.is_file()
        except OSError:
            is_file = False
        if is_file:
            source = f"PANDA_AUTH_TOKEN={value} (file {candidate})"
            return _read_token_file(str(candidate), source), source
    return value, "PANDA_AUTH_TOKEN"


def tls_credentials(ca_file: str | None = None, env: Mapping[str, str] | None = None) -> Credentials:
    """The TLS side of the credentials only (no token file is read)."""
    env = os.environ if env is None else env
    return Credentials(proxy=env.get("X509_USER_PROXY") or None, cafile=ca_file or env.get("X509_CERT_FILE") or None,
                       capath=env.get("X509_CERT_DIR") or None)


def current_credentials(ca_file: str | None = None, env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials as they are now (environment and token file read at each call)."""
    env = os.environ if env is None else env
    token, source = _token(env)
    return replace(tls_credentials(ca_file, env), token=token, token_source=source,
                   origin=env.get("PANDA_AUTH_VO") or env.get("PANDA_AUTH_ORIGIN") or None)


# --- TLS contexts -------------------------------------------------------------------------------
def _file_identity(path: str) -> tuple[int, int, int]:
    """Changes whenever the file is rewritten or replaced: (inode, size, mtime in ns)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ServerError(f"cannot use the X.509 proxy X509_USER_PROXY={path}: {exc}", retryable=True) from exc
    return st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _context(cafile: str | None, capath: str | None, proxy: str | None,
             _identity: tuple[int, int, int] | None) -> ssl.SSLContext:
    """Loading CAs takes ~80 ms: built once per (CAs, proxy version)."""
    try:
        context = (ssl.create_default_context(cafile=cafile, capath=capath) if cafile or capath
                   else httpx.create_ssl_context())
    except (OSError, ssl.SSLError) as exc:
        raise ServerError(f"cannot load the CA certificates (cafile={cafile}, capath={capath}): {exc}") from exc
    if proxy:
        try:
            context.load_cert_chain(proxy)
        except (OSError, ssl.SSLError) as exc:  # missing, half-written while renewed, or no key in it
            raise ServerError(f"cannot use the X.509 proxy X509_USER_PROXY={proxy} as client certificate: {exc}",
                              retryable=True) from exc
    return context


def context_for(creds: Credentials, with_proxy: bool = True) -> ssl.SSLContext:
    """The TLS context verifying the server and, if there is one (and wanted), presenting the proxy."""
    proxy = creds.proxy if with_proxy else None
    return _context(creds.cafile, creds.capath, proxy, _file_identity(proxy) if proxy else None)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS context of the current environment. The launcher builds it once before forking the
    services, so that no service pays for loading CAs on a job's critical path. It never raises for
    an unusable proxy (the call that needs the proxy reports that); it falls back to the context
    without client certificate."""
    creds = tls_credentials(ca_file)
    try:
        return context_for(creds)
    except ServerError as exc:
        if not creds.proxy:
            raise
        log.warning("%s", exc)
        return context_for(creds, with_proxy=False)


# --- telling TLS refusals from network trouble ---------------------------------------------------
REFUSAL_ALERTS = ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED",
                  "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED",
                  "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED", "ALERT_DECRYPT_ERROR",
                  "ALERT_HANDSHAKE_FAILURE")


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def tls_refusal(exc: BaseException, creds: Credentials) -> tuple[str, bool] | None:
    """(message, refused) when ``exc`` is a definite TLS failure (no point retrying), else None.
    ``refused``: the handshake failed over a certificate (ours refused by the server, or the server's
    not trusted), which only a change of credentials or CAs can mend."""
    cause = ssl_cause(exc)
    if cause is None or isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return None  # a closed or reset connection: also what network trouble looks like
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"the server's certificate was not accepted ({cause.verify_message or cause.reason}); "
                f"verified against {creds.describe_ca()}"), True
    text = f"{cause.reason or ''} {cause}".upper()
    if "CERTIFICATE_REQUIRED" in text and not creds.proxy:
        return ("the server requires a client certificate and the pilot has none: set X509_USER_PROXY to an "
                f"X.509 proxy the server accepts (TLS alert: {cause})"), True
    if any(alert in text for alert in REFUSAL_ALERTS):
        what = (f"the client certificate X509_USER_PROXY={creds.proxy}" if creds.proxy
                else "the connection without client certificate (X509_USER_PROXY is not set)")
        return f"the server refused {what} in the TLS handshake: {cause}", True
    return f"TLS failure: {cause}", False
