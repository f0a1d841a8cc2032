"""The XRootD mover against a real xrootd server (tests/stager/servers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.stager.movers.base import Reason, TransferError
from services.stager.movers.xrootd import XRootDMover, split
from tests.stager.mover_contract import DATA, MoverContract
from tests.stager.servers import XRootDServer


class TestXRootDMover(MoverContract):
    mover_class = XRootDMover
    schemes = {"root", "xroot"}

    @pytest.fixture
    def server(self, xrootd_server: XRootDServer) -> XRootDServer:
        return xrootd_server

    def test_stored_copy_checked_with_the_servers_adler32(self, server: XRootDServer, area: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
        """The check after upload asks the server (checksum query); it never reads the copy back."""
        src = tmp_path / "o.bin"
        src.write_bytes(DATA)
        monkeypatch.setattr(XRootDMover, "open_source", lambda *_a: pytest.fail("the copy was read back"))
        asyncio.run(XRootDMover().copy_out(src, server.file_url(f"{area}/o.bin"), lambda _n: None))
        assert server.read(f"{area}/o.bin") == DATA


def test_urls_with_one_or_two_slashes_name_the_same_absolute_path():
    assert split("root://h:1094//se/a%2Bb/f") == ("root://h:1094", "/se/a+b/f")
    assert split("xroot://h/se/f") == ("root://h", "/se/f")
    with pytest.raises(TransferError) as info:
        split("root:///no/host")
    assert info.value.reason == Reason.PROTOCOL
