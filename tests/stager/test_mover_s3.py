"""The S3 mover against a real S3 store (SeaweedFS, tests/stager/servers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.stager.movers import s3
from services.stager.movers.base import Reason, TransferError
from services.stager.movers.s3 import S3Mover, split
from tests.stager.mover_contract import DATA, MoverContract, failure
from tests.stager.servers import S3Server


class TestS3Mover(MoverContract):
    mover_class = S3Mover
    schemes = {"s3"}

    @pytest.fixture
    def server(self, s3_server: S3Server) -> S3Server:
        return s3_server

    def in_progress(self, server: S3Server, area: str) -> list[str]:
        """No temporary name on S3: the multipart upload itself is the partial copy."""
        return [key for key in server.uploads_in_progress() if key.startswith(f"{area}/")]

    def assert_no_upload_in_progress(self, server: S3Server, area: str) -> None:
        assert self.in_progress(server, area) == []  # aborted, not left to linger

    def test_corrupted_stored_copy_never_gets_the_final_name(self, server: S3Server, area: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
        """A part damaged on its way: the server's md5 (ETag) differs, the upload is aborted, no object."""
        src = tmp_path / "c.bin"
        src.write_bytes(DATA)
        client = s3.client_for(split(server.url)[0])
        upload_part = client.upload_part

        def damaged(**kwargs: Any) -> Any:
            if kwargs["PartNumber"] == 2:
                kwargs["Body"] = b"\0" + kwargs["Body"][1:]
            return upload_part(**kwargs)

        monkeypatch.setattr(client, "upload_part", damaged)
        error = failure(lambda: self.copy_out(src, server.file_url(f"{area}/out/c.bin")))
        assert error.reason == Reason.MD5 and "part 2" in error.diag and not error.transient
        assert self.leftovers(server, area) == [] and self.in_progress(server, area) == []

    def test_without_md5_etags_the_object_is_read_back(self, server: S3Server, area: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
        """Stores whose ETags are no md5 (SSE-KMS...): the object is re-read, and removed if it differs."""
        monkeypatch.setattr(s3, "_etag_matches", lambda *_a: False)
        src = tmp_path / "o.bin"
        src.write_bytes(DATA)
        assert asyncio.run(S3Mover().copy_out(src, server.file_url(f"{area}/o.bin"), lambda _n: None))[0] == len(DATA)
        monkeypatch.setattr(S3Mover, "stored_adler32", lambda *_a: "00000001")
        error = failure(lambda: asyncio.run(S3Mover().copy_out(src, server.file_url(f"{area}/p.bin"),
                                                                 lambda _n: None)))
        assert error.reason == Reason.ADLER32
        assert self.leftovers(server, area) == [f"{area}/o.bin"]


def test_url_convention(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("S3_SECURE", raising=False)
    assert split("s3://h:9000/bucket/a/b%2Bc") == ("http://h:9000", "bucket", "a/b+c")
    assert split("s3://h:443/bucket/k")[0] == "https://h:443"
    monkeypatch.setenv("S3_SECURE", "true")
    assert split("s3://h:9000/bucket/k")[0] == "https://h:9000"
    with pytest.raises(TransferError) as info:
        split("s3://h:9000/")
    assert info.value.reason == Reason.PROTOCOL
