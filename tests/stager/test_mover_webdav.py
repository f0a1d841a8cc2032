"""The HTTP/WebDAV mover against a real WebDAV server (wsgidav, tests/stager/servers.py)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from services.stager.movers.base import Reason, TransferError
from services.stager.movers.webdav import WebDAVMover, _adler32_of, http_url
from tests.stager.mover_contract import ADLER, DATA, MoverContract
from tests.stager.servers import WebDAVServer


class TestWebDAVMover(MoverContract):
    mover_class = WebDAVMover
    schemes = {"https", "davs", "http", "dav"}

    @pytest.fixture
    def server(self, webdav_server: WebDAVServer) -> WebDAVServer:
        return webdav_server

    def test_dav_scheme_is_plain_http(self, server: WebDAVServer, area: str, tmp_path: Path):
        server.put(f"{area}/f", DATA[:100])
        url = server.file_url(f"{area}/f").replace("http://", "dav://")
        assert asyncio.run(WebDAVMover().copy_in(url, tmp_path / "f", None, 100, lambda _n: None))[0] == 100

    def test_without_a_digest_the_stored_copy_is_read_back(self, server: WebDAVServer, area: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
        """wsgidav answers no Want-Digest: the check after upload re-reads the copy by GET."""
        reads: list[str] = []
        open_source = WebDAVMover.open_source

        def counted(mover: WebDAVMover, url: str):
            reads.append(url)
            return open_source(mover, url)

        monkeypatch.setattr(WebDAVMover, "open_source", counted)
        src = tmp_path / "o.bin"
        src.write_bytes(DATA)
        asyncio.run(WebDAVMover().copy_out(src, server.file_url(f"{area}/o.bin"), lambda _n: None))
        assert len(reads) == 1 and ".nodepilot-" in reads[0]  # the temporary copy, before its rename
        assert "re-read" in WebDAVMover.verification


def test_digest_header_forms():
    assert _adler32_of(f"adler32={ADLER}") == ADLER
    assert _adler32_of(f"md5=abc, ADLER32={ADLER.upper()}") == ADLER
    assert _adler32_of("adler32=" + base64.b64encode(bytes.fromhex(ADLER)).decode()) == ADLER
    assert _adler32_of("md5=xyz") is None


def test_scheme_mapping():
    assert http_url("davs://h:8443/a/b") == "https://h:8443/a/b"
    assert http_url("dav://h/a") == "http://h/a"
    with pytest.raises(TransferError) as info:
        http_url("davs:///nohost")
    assert info.value.reason == Reason.PROTOCOL
