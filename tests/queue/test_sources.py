"""The URL sources served by a real local HTTP server: downloaded and cached, the cache used while young
(and while the server is down), the next source tried when there is no copy at all."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nodepilot.config import PilotConfig
from nodepilot.queue import sources
from nodepilot.queue.loader import load
from nodepilot.queue.schema import QueueConfigError
from tests.queue.cric import ddm_endpoint, file_protocol, queue_record, write


class Server:
    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        handler = partial(_Handler, self, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, server: Server, *args, **kwargs) -> None:
        self.owner = server
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.owner.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cric_server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    (root / "cache" / "schedconfig").mkdir(parents=True)
    se = tmp_path / "se"
    record = queue_record("WEB_Q", {"read_lan": ["WEB_SE"], "write_lan": ["WEB_SE"]}, {"default": ["mv"]},
                          maxwdir=4321)
    write(root / "cache" / "schedconfig" / "WEB_Q.all.json", record)
    write(root / "ddmendpoints.json", {"WEB_SE": ddm_endpoint(7, "WEB_SE", {"read_lan": [file_protocol(se)],
                                                                           "write_lan": [file_protocol(se)]})})
    server = Server(root)
    yield server
    if server.thread.is_alive():
        server.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "RETRY_PAUSE_S", 0.01)


def config(tmp_path: Path, server: Server, **extra) -> PilotConfig:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return PilotConfig(queue="WEB_Q", work_dir=str(work), se_dir="",
                       queuedata_url=f"{server.url}/cache/schedconfig/{{pandaqueue}}.all.json",
                       storagedata_url=f"{server.url}/ddmendpoints.json", **extra)


def test_downloaded_cached_and_the_cache_used_while_young(tmp_path, cric_server):
    cfg = config(tmp_path, cric_server)
    assert load(cfg).maxwdir_mb == 4321
    assert cric_server.requests == ["/cache/schedconfig/WEB_Q.all.json", "/ddmendpoints.json"]
    cached = Path(cfg.work_dir) / "queuedata-cache" / "queuedata-WEB_Q.json"
    assert cached.is_file()
    cric_server.stop()
    assert load(cfg).maxwdir_mb == 4321  # young copies: the server is not asked


def test_server_down_an_old_copy_is_used_and_said_once(tmp_path, cric_server, caplog):
    cfg = config(tmp_path, cric_server)
    load(cfg)
    cric_server.stop()
    old = time.time() - sources.CACHE_MAX_AGE_S - 60
    for copy in (Path(cfg.work_dir) / "queuedata-cache").iterdir():
        os.utime(copy, (old, old))
    with caplog.at_level(logging.WARNING):
        assert load(cfg).maxwdir_mb == 4321
    said = [r.getMessage() for r in caplog.records if "WEB_Q.all.json" in r.getMessage()]
    assert len(said) == 1 and "download failed 3 times" in said[0] and "using the cached copy" in said[0]


def test_server_down_and_no_copy_the_next_source_is_tried(tmp_path, cric_server, caplog):
    dump = write(tmp_path / "cric_pandaqueues.json", {"WEB_Q": queue_record(
        "WEB_Q", {"read_lan": ["WEB_SE"], "write_lan": ["WEB_SE"]}, {"default": ["mv"]}, maxwdir=55)})
    local_ddm = tmp_path / "work" / "cric_ddmendpoints.json"
    cfg = config(tmp_path, cric_server, queuedata_dump=dump)
    local_ddm.write_text((cric_server.root / "ddmendpoints.json").read_text())
    cric_server.stop()
    with caplog.at_level(logging.WARNING):
        assert load(cfg).maxwdir_mb == 55
    lines = [r.getMessage() for r in caplog.records]
    assert sum("trying the next source" in line for line in lines) == 2, lines  # the queue and the DDM URL
    cfg.queuedata_dump = ""
    with pytest.raises(QueueConfigError, match="queue WEB_Q: no queue definition could be read"):
        load(cfg)
