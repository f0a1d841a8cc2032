"""The few Rucio REST calls the ``rucio`` mover makes, and where its credentials come from.

Rucio's own client package pins versions of libraries the pilot pins differently (boto3, redis,
prometheus-client, jsonschema), so it cannot live in the pilot's environment: this module speaks
Rucio's REST API with httpx instead (docs/movers.md, "Rucio"). Calls: an auth token
(``/auth/userpass``, ``/auth/x509``, or a bearer token used as is), ``POST /replicas/list``,
``GET /rses/<rse>/protocols``, ``GET /rses/<rse>/lfns2pfns`` and ``POST /replicas``.

Configuration (``RucioConfig.load``): the Rucio client file (``RUCIO_CONFIG``, section ``[client]``),
then the queue's ``stager.rucio`` settings, then the environment (``RUCIO_ACCOUNT``,
``RUCIO_AUTH_TYPE``, ``X509_USER_PROXY``, ``BEARER_TOKEN``/``BEARER_TOKEN_FILE``). Passwords and
tokens never reach a log line, an error message or a command line.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

if TYPE_CHECKING:
    import httpx

    from services.stager.movers.rucio_tokens import TokenStore

log = logging.getLogger(__name__)
T = TypeVar("T")

AUTH_TYPES = ("userpass", "x509", "x509_proxy", "oidc", "token")
TIMEOUT_S = 30.0


class RucioError(Exception):
    """A Rucio call failed; ``status`` is the HTTP status (0: no answer), ``kind`` Rucio's exception class."""

    def __init__(self, what: str, status: int = 0, kind: str = "", message: str = "") -> None:
        detail = f"{kind}: {message}" if kind else message
        super().__init__(f"Rucio {what} failed" + (f" (HTTP {status})" if status else "") + f": {detail}"[:400])
        self.status, self.kind = status, kind

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status >= 500 or self.status == 429


@dataclass
class RucioConfig:
    host: str = ""
    auth_host: str = ""
    auth_type: str = "userpass"
    account: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    proxy: str = ""  # X.509 proxy file (x509 / x509_proxy)
    client_cert: str = ""
    client_key: str = ""
    ca_cert: str = ""
    token: str = field(default="", repr=False)  # a bearer token (oidc / token)
    vo: str = ""

    @classmethod
    def load(cls, settings: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> RucioConfig:
        env = os.environ if environ is None else environ
        cfg = cls()
        path = env.get("RUCIO_CONFIG", "")
        if path:
            cfg._from_file(Path(path))
        for key in ("host", "auth_host", "auth_type", "account", "ca_cert", "vo"):
            value = (settings or {}).get(key)
            if isinstance(value, str) and value:
                setattr(cfg, key, value)
        cfg.account = env.get("RUCIO_ACCOUNT") or cfg.account
        cfg.auth_type = (env.get("RUCIO_AUTH_TYPE") or cfg.auth_type).lower()
        cfg.proxy = env.get("X509_USER_PROXY") or cfg.proxy
        cfg.token = env.get("BEARER_TOKEN", "").strip() or _read(env.get("BEARER_TOKEN_FILE", "")) or cfg.token
        cfg.auth_host = cfg.auth_host or cfg.host
        return cfg

    def _from_file(self, path: Path) -> None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(path.read_text())
        except (OSError, configparser.Error) as exc:
            log.warning("Rucio client configuration %s unreadable: %s", path, exc)
            return
        section = parser["client"] if parser.has_section("client") else {}
        names = {"rucio_host": "host", "auth_host": "auth_host", "auth_type": "auth_type", "account": "account",
                 "username": "username", "password": "password", "client_x509_proxy": "proxy",
                 "client_cert": "client_cert", "client_key": "client_key", "ca_cert": "ca_cert", "vo": "vo"}
        for key, attr in names.items():
            value = section.get(key, "")
            if value:
                setattr(self, attr, os.path.expandvars(value))

    def problem(self) -> str:
        """What keeps this configuration from working ("" when nothing)."""
        if not self.host.startswith(("http://", "https://")):
            return f"no Rucio host (rucio_host {self.host!r} is not an http(s) URL)"
        if self.auth_type not in AUTH_TYPES:
            return f"Rucio auth type {self.auth_type!r} is not one of {', '.join(AUTH_TYPES)}"
        if not self.account:
            return "no Rucio account (RUCIO_ACCOUNT or the client configuration's account)"
        if self.auth_type == "userpass" and not (self.username and self.password):
            return "Rucio userpass authentication without a username and password in the client configuration"
        if self.auth_type.startswith("x509") and not (self.proxy or self.client_cert):
            return "Rucio X.509 authentication without a proxy (X509_USER_PROXY) or client certificate"
        if self.auth_type in ("oidc", "token") and not self.token:
            return "Rucio token authentication without a token (BEARER_TOKEN or BEARER_TOKEN_FILE)"
        return ""

    @property
    def fetches_tokens(self) -> bool:
        """Whether tokens come from Rucio's auth calls (not given as a bearer token)."""
        return self.auth_type not in ("oidc", "token")

    def identity(self) -> str:
        """Who a fetched token is for: where it comes from and with which credentials (no secret in it)."""
        return "\n".join((self.auth_host, self.account, self.auth_type, self.username, self.vo,
                          self.proxy or self.client_cert))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip() if path else ""
    except OSError:
        return ""


class RucioClient:
    """One pilot's connection to Rucio: one token, fetched on first use and again on HTTP 401. With a
    ``tokens`` store (services/stager/movers/rucio_tokens.py) a token is taken from it before asking
    Rucio, and a fetched one is put there: the pilot's next stager instances use it."""

    def __init__(self, config: RucioConfig, tokens: TokenStore | None = None) -> None:
        import httpx  # only a stager that talks to Rucio needs it

        self.config = config
        verify: Any = config.ca_cert or True
        cert: Any = None
        if config.auth_type.startswith("x509"):
            cert = (config.proxy, config.proxy) if config.proxy else (config.client_cert, config.client_key or None)
        self.http = httpx.AsyncClient(timeout=TIMEOUT_S, verify=verify, cert=cert)
        self.tokens = tokens if config.fetches_tokens else None
        self._token = ""
        self._token_lock = asyncio.Lock()

    async def _auth(self) -> tuple[str, str]:
        """A token and Rucio's expiry of it ("" when not told)."""
        cfg = self.config
        if not cfg.fetches_tokens:
            return cfg.token, ""
        headers = {"X-Rucio-Account": cfg.account, "X-Rucio-AppID": "nodepilot"}
        if cfg.vo:
            headers["X-Rucio-VO"] = cfg.vo
        if cfg.auth_type == "userpass":
            headers |= {"X-Rucio-Username": cfg.username, "X-Rucio-Password": cfg.password}
            url = f"{cfg.auth_host}/auth/userpass"
        else:
            url = f"{cfg.auth_host}/auth/x509"
        reply = await self._send("authentication", "GET", url, headers)
        token = reply.headers.get("X-Rucio-Auth-Token", "")
        if not token:
            raise RucioError("authentication", reply.status_code, message="no token in the answer")
        return token, reply.headers.get("X-Rucio-Auth-Token-Expires", "")

    async def _token_now(self, stale: str = "") -> str:
        """The token to use: ours, else the store's, else a new one (kept in the store); never ``stale``
        (one Rucio refused)."""
        async with self._token_lock:
            if self._token and self._token != stale:
                return self._token
            kept = await self.tokens.get() if self.tokens is not None else ""
            if kept and kept != stale:
                self._token = kept
                return kept
            token, expires = await self._auth()
            if self.tokens is not None:
                await self.tokens.put(token, expires)
            self._token = token
            return token

    async def authenticate(self) -> None:
        """Fetch the token now rather than on the first call (a stager does it when it starts)."""
        await self._token_now()

    async def call(self, what: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One authenticated call, its answer read whole; a 401 (token expired) fetches a new token once."""
        async with self.opened(what, method, path, **kwargs) as reply:
            await self._read(what, reply.aread())
            return reply

    @contextlib.asynccontextmanager
    async def opened(self, what: str, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """An authenticated call whose answer is read as it comes (``_read`` each part of it): a
        successful answer, or RucioError; a 401 (token expired) fetches a new token once."""
        token = await self._token_now()
        for retry in (False, True):
            headers = {"X-Rucio-Auth-Token": token, **kwargs.get("headers", {})}
            reply = await self._send(what, method, f"{self.config.host}{path}", headers, stream=True,
                                     **{k: v for k, v in kwargs.items() if k != "headers"})
            if reply.status_code != 401 or retry:
                break
            await reply.aclose()
            token = await self._token_now(stale=token)
        try:
            if not reply.is_success:
                await self._read(what, reply.aread())
                kind, message = _rucio_error(reply)
                raise RucioError(what, reply.status_code, kind, message)
            yield reply
        finally:
            await reply.aclose()

    async def _read(self, what: str, part: Awaitable[T]) -> T:
        """A part of an answer being read; a broken answer is RucioError (no answer, transient)."""
        import httpx

        try:
            return await part
        except httpx.HTTPError as exc:
            raise RucioError(what, message=f"{exc.__class__.__name__} reading the answer") from None

    async def _send(self, what: str, method: str, url: str, headers: dict[str, str], stream: bool = False,
                    **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            request = self.http.build_request(method, url, headers=headers, **kwargs)
            reply = await self.http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise RucioError(what, message=f"{exc.__class__.__name__} talking to {url.split('?')[0]}") from None
        if what == "authentication" and not reply.is_success:
            kind, message = _rucio_error(reply)
            raise RucioError(what, reply.status_code, kind, message)
        return reply

    # --- the calls ----------------------------------------------------------------------------------
    async def list_replicas(self, dids: list[tuple[str, str]], schemes: list[str], site: str,
                            sort: str = "") -> list[dict[str, Any]]:
        return [item async for item in self.replicas(dids, schemes, site, sort)]

    async def replicas(self, dids: list[tuple[str, str]], schemes: list[str], site: str,
                       sort: str = "") -> AsyncIterator[dict[str, Any]]:
        """``list_replicas``, each file's entry as soon as Rucio streams it (one JSON line per file).
        ``sort``: Rucio's order of the WAN replicas of a file ("": Rucio's default, ``geoip``)."""
        body: dict[str, Any] = {"dids": [{"scope": s, "name": n} for s, n in dids], "schemes": schemes or None,
                                "unavailable": False, "all_states": False, "resolve_archives": False}
        if sort:
            body["sort"] = sort
        if site:
            body["client_location"] = {"site": site}
        async with self.opened("list_replicas", "POST", "/replicas/list", json=body,
                               headers={"Accept": "application/x-json-stream"}) as reply:
            lines = reply.aiter_lines()
            while True:
                try:
                    line = await self._read("list_replicas", anext(lines))
                except StopAsyncIteration:
                    return
                if line.strip():
                    yield json.loads(line)

    async def protocols(self, rse: str) -> list[dict[str, Any]]:
        reply = await self.call("protocols", "GET", f"/rses/{quote(rse)}/protocols")
        body = reply.json()  # a list of protocols (older servers: {"protocols": [...]})
        return list(body.get("protocols", []) if isinstance(body, dict) else body)

    async def lfn2pfn(self, rse: str, scope: str, name: str, scheme: str, domain: str) -> str:
        reply = await self.call("lfns2pfns", "GET", f"/rses/{quote(rse)}/lfns2pfns",
                                params={"lfn": f"{scope}:{name}", "scheme": scheme, "domain": domain,
                                        "operation": "write"})
        return str(reply.json()[f"{scope}:{name}"])

    async def add_replica(self, rse: str, scope: str, name: str, size: int, adler32: str) -> None:
        files = [{"scope": scope, "name": name, "bytes": size, "adler32": adler32}]
        await self.call("add_replicas", "POST", "/replicas", json={"rse": rse, "files": files})

    async def close(self) -> None:
        await self.http.aclose()


def _rucio_error(reply: httpx.Response) -> tuple[str, str]:
    """Rucio's exception class and message: in the ExceptionClass/ExceptionMessage headers or the body."""
    kind = reply.headers.get("ExceptionClass", "")
    message = reply.headers.get("ExceptionMessage", "")
    if not kind:
        try:
            body = reply.json()
            kind, message = str(body.get("ExceptionClass", "")), str(body.get("ExceptionMessage", ""))
        except ValueError:
            message = reply.text[:200]
    return kind, message
