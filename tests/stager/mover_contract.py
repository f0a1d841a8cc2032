"""What every remote mover must do, checked against a real server (tests/stager/servers.py).

A test module subclasses ``MoverContract`` with its mover class and a ``server`` fixture; the checks
are then run for that protocol. Files live under a fresh directory per test, so one server serves
the whole session.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from nodepilot.job import Checksum
from services.stager.movers.base import PARTIAL_PREFIX, Reason, TransferError, mover_for
from services.stager.movers.stream import StreamMover
from services.stager.paths import deterministic_path
from tests.conftest import running_service
from tests.stager.servers import StorageServer
from tests.stager.test_stager_service import answer, in_file, out_file, send, workdir

DATA = os.urandom(17 * (1 << 20) + 12345)  # several chunks, several S3 parts, a short tail
ADLER = f"{zlib.adler32(DATA) & 0xFFFFFFFF:08x}"
MD5 = hashlib.md5(DATA).hexdigest()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def failure(call: Callable[[], Any]) -> TransferError:
    with pytest.raises(TransferError) as info:
        call()
    return info.value


class MoverContract:
    mover_class: ClassVar[type[StreamMover]]
    schemes: ClassVar[set[str]]

    @pytest.fixture
    def server(self) -> StorageServer:
        raise NotImplementedError  # the protocol's test module gives its server

    @pytest.fixture
    def area(self) -> str:
        """A fresh directory on the server for one test."""
        return f"t{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def stored(self, server: StorageServer, area: str) -> str:
        """DATA on the server; its URL."""
        server.put(f"{area}/in/data.bin", DATA)
        return server.file_url(f"{area}/in/data.bin")

    def mover(self) -> StreamMover:
        return self.mover_class()

    def copy_in(self, url: str, dst: Path, expected: Checksum | None = None, size: int | None = len(DATA),
                progress: Callable[[int], None] | None = None, mover: StreamMover | None = None) -> tuple[int, str]:
        return run((mover or self.mover()).copy_in(url, dst, expected, size, progress or (lambda _n: None)))

    def copy_out(self, src: Path, url: str, progress: Callable[[int], None] | None = None,
                 mover: StreamMover | None = None) -> tuple[int, str]:
        return run((mover or self.mover()).copy_out(src, url, progress or (lambda _n: None)))

    def leftovers(self, server: StorageServer, area: str) -> list[str]:
        return [name for name in server.listing() if name.startswith(f"{area}/")]

    # --- registration --------------------------------------------------------------------
    def test_found_by_its_schemes(self):
        for scheme in self.schemes:
            assert type(mover_for(f"{scheme}://host:1/x/y")) is self.mover_class

    # --- stage-in ----------------------------------------------------------------------------
    @pytest.mark.parametrize("checksum", [Checksum("adler32", ADLER), Checksum("md5", MD5), None])
    def test_stage_in_verified_while_streaming(self, stored: str, tmp_path: Path, checksum: Checksum | None):
        seen: list[int] = []
        assert self.copy_in(stored, tmp_path / "data.bin", checksum, progress=seen.append) == (len(DATA), ADLER)
        assert (tmp_path / "data.bin").read_bytes() == DATA
        assert seen == sorted(seen) and seen[-1] == len(DATA) and len(seen) > 1  # streamed, chunk by chunk
        assert max(b - a for a, b in zip([0, *seen], seen, strict=False)) <= self.mover_class.chunk_size
        assert os.listdir(tmp_path) == ["data.bin"]

    def test_size_mismatch(self, stored: str, tmp_path: Path):
        error = failure(lambda: self.copy_in(stored, tmp_path / "data.bin", size=len(DATA) - 1))
        assert error.reason == Reason.SIZE and not error.transient
        assert os.listdir(tmp_path) == []

    @pytest.mark.parametrize(("checksum", "reason"), [(Checksum("adler32", ADLER), Reason.ADLER32),
                                                      (Checksum("md5", MD5), Reason.MD5)])
    def test_corrupted_replica_is_detected(self, server: StorageServer, stored: str, area: str, tmp_path: Path,
                                           checksum: Checksum, reason: str):
        server.corrupt(f"{area}/in/data.bin")  # same size, other bytes
        error = failure(lambda: self.copy_in(stored, tmp_path / "data.bin", checksum))
        assert error.reason == reason and checksum.value in error.diag and not error.transient
        assert os.listdir(tmp_path) == []

    def test_missing_replica(self, server: StorageServer, area: str, tmp_path: Path):
        url = server.file_url(f"{area}/in/absent.bin")
        error = failure(lambda: self.copy_in(url, tmp_path / "absent.bin"))
        assert error.reason == Reason.MISSING and not error.transient
        assert "absent.bin" in error.diag
        assert os.listdir(tmp_path) == []

    # --- stage-out ---------------------------------------------------------------------------
    def test_stage_out_appears_only_when_complete_and_verified(self, server: StorageServer, area: str,
                                                               tmp_path: Path):
        src = tmp_path / "out.bin"
        src.write_bytes(DATA)
        final = f"{area}/out/a/b/out.bin"
        during: list[tuple[bool, list[str]]] = []

        def progress(done: int) -> None:  # in the copying thread, while the upload runs
            if done > len(DATA) // 2 and not during:
                during.append((server.exists(final), self.in_progress(server, area)))

        assert self.copy_out(src, server.file_url(final), progress) == (len(DATA), ADLER)
        assert during and during[0][0] is False, "the final name existed before the upload was complete"
        assert during[0][1], "no partial upload seen while writing"
        assert server.read(final) == DATA
        assert self.leftovers(server, area) == [final]

    def in_progress(self, server: StorageServer, area: str) -> list[str]:
        """The partial copies of an upload under way (temporary names, by default)."""
        return [n for n in self.leftovers(server, area) if Path(n).name.startswith(PARTIAL_PREFIX)]

    def test_corrupted_stored_copy_never_gets_the_final_name(self, server: StorageServer, area: str,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        src = tmp_path / "c.bin"
        src.write_bytes(DATA)
        upload = self.mover_class.upload

        def upload_then_corrupt(mover: StreamMover, url: str, chunks: Any, size: int) -> None:
            upload(mover, url, chunks, size)
            server.corrupt(f"{area}/out/{url.rpartition('/')[2]}")  # the temporary copy, behind the server's back

        monkeypatch.setattr(self.mover_class, "upload", upload_then_corrupt)
        error = failure(lambda: self.copy_out(src, server.file_url(f"{area}/out/c.bin")))
        assert error.reason == Reason.ADLER32 and not error.transient and ADLER in error.diag
        assert self.leftovers(server, area) == []

    def test_stage_out_replaces_an_older_copy(self, server: StorageServer, area: str, tmp_path: Path):
        server.put(f"{area}/out/old.bin", b"an older, different copy")
        src = tmp_path / "old.bin"
        src.write_bytes(DATA[:1000])
        assert self.copy_out(src, server.file_url(f"{area}/out/old.bin"))[0] == 1000
        assert server.read(f"{area}/out/old.bin") == DATA[:1000]

    def test_stage_out_of_an_empty_file(self, server: StorageServer, area: str, tmp_path: Path):
        src = tmp_path / "empty"
        src.write_bytes(b"")
        assert self.copy_out(src, server.file_url(f"{area}/out/empty")) == (0, "00000001")
        assert server.read(f"{area}/out/empty") == b""

    def test_stage_out_of_a_missing_file(self, server: StorageServer, area: str, tmp_path: Path):
        error = failure(lambda: self.copy_out(tmp_path / "nothing", server.file_url(f"{area}/out/nothing")))
        assert error.reason == Reason.MISSING
        assert self.leftovers(server, area) == []

    def test_interrupted_upload_leaves_nothing_at_the_final_name(self, server: StorageServer, area: str,
                                                                 tmp_path: Path):
        src = tmp_path / "big.bin"
        src.write_bytes(DATA)
        mover = self.mover()
        mover.timeout_base_s, mover.timeout_per_mb_s = 0.3, 0.0
        calls: list[int] = []

        def stalled(done: int) -> None:  # the first chunk outlives the time-out: cancelled mid-transfer
            calls.append(done)
            if len(calls) == 1:
                time.sleep(0.6)

        error = failure(lambda: self.copy_out(src, server.file_url(f"{area}/out/big.bin"), stalled, mover))
        assert error.reason == Reason.TIMEOUT
        assert calls[-1] < len(DATA)  # stopped before the end
        assert self.leftovers(server, area) == []  # neither the final name nor a partial copy
        self.assert_no_upload_in_progress(server, area)

    def assert_no_upload_in_progress(self, server: StorageServer, area: str) -> None:
        """Hook: a protocol with server-side upload state checks it is gone."""

    def test_cancelled_task_cleans_up(self, server: StorageServer, area: str, tmp_path: Path):
        """The stager's shutdown cancels transfers: the copying thread stops at its next chunk and cleans up."""
        src = tmp_path / "big.bin"
        src.write_bytes(DATA)
        started, release = threading.Event(), threading.Event()

        def progress(_done: int) -> None:
            started.set()
            release.wait(5)

        async def cancel_midway() -> None:
            task = asyncio.ensure_future(self.mover().copy_out(src, server.file_url(f"{area}/out/big.bin"), progress))
            await asyncio.to_thread(started.wait, 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()

        run(cancel_midway())
        deadline = time.monotonic() + 10
        while self.leftovers(server, area) and time.monotonic() < deadline:  # the thread finishes on its own
            time.sleep(0.05)
        assert self.leftovers(server, area) == []

    # --- the server down, then back ---------------------------------------------------------
    def test_server_down_is_transient_and_back_works(self, server: StorageServer, stored: str, area: str,
                                                     tmp_path: Path):
        src = tmp_path / "o.bin"
        src.write_bytes(DATA[:5000])
        server.stop()
        try:
            down_in = failure(lambda: self.copy_in(stored, tmp_path / "data.bin"))
            down_out = failure(lambda: self.copy_out(src, server.file_url(f"{area}/out/o.bin")))
        finally:
            server.start()
        for error in (down_in, down_out):
            assert error.transient and error.reason == Reason.IO, error.diag
        assert sorted(os.listdir(tmp_path)) == ["o.bin"]
        assert self.copy_in(stored, tmp_path / "data.bin", Checksum("adler32", ADLER)) == (len(DATA), ADLER)
        assert self.copy_out(src, server.file_url(f"{area}/out/o.bin"))[0] == 5000

    # --- capabilities ------------------------------------------------------------------------
    def test_stat_for_direct_access(self, stored: str):
        stat = run(self.mover().stat(stored))
        assert stat.size == len(DATA)
        assert stat.adler32 == (ADLER if self.mover_class.can_query_checksum else None)

    # --- through the real stager -------------------------------------------------------------
    def test_through_the_stager_service(self, rds, pilot_config, server: StorageServer, area: str):
        scope = f"{area}.data"
        endpoint = {"name": "REMOTE_SE", "url": server.url}
        server.put(deterministic_path(scope, "good.dat"), DATA)
        server.put(deterministic_path(scope, "bad.dat"), DATA[::-1])  # same size, another adler32
        (workdir(pilot_config, 41) / "result.dat").write_bytes(DATA)
        with running_service("stager", pilot_config):
            send(rds, pilot_config, "stagein", 40, "40:1:stagein", endpoints=[endpoint],
                 files=[in_file("good.dat", DATA, scope=scope), in_file("bad.dat", DATA, scope=scope)])
            send(rds, pilot_config, "stageout", 41, "41:1:stageout", endpoints=[endpoint],
                 files=[out_file("result.dat", scope=f"{area}.out")])
            staged_in, staged_out = answer(rds, 40, "stagein"), answer(rds, 41, "stageout")
        assert staged_in["error_code"] == 1171 and "adler32 mismatch" in staged_in["diag"]
        good, bad = staged_in["files"]
        assert good["status"] == "done" and good["checksum"] == f"ad:{ADLER}" and good["endpoint"] == "REMOTE_SE"
        assert bad["status"] == "failed" and bad["error_code"] == 1171
        assert sorted(os.listdir(workdir(pilot_config, 40))) == ["good.dat"]
        assert (workdir(pilot_config, 40) / "good.dat").read_bytes() == DATA
        assert staged_out["ok"] is True, staged_out
        result = staged_out["files"][0]
        stored_at = deterministic_path(f"{area}.out", "result.dat")
        assert result["surl"] == server.file_url(stored_at) and result["checksum"] == f"ad:{ADLER}"
        assert server.read(stored_at) == DATA
