"""The ``rucio`` mover through a real stager against a real Rucio server (bench/rucio_server.py):
inputs found through Rucio (LAN replica first, a corrupt one skipped), outputs and the log uploaded
and registered, direct access, and every transfer's trace in Rucio's own trace file."""

from __future__ import annotations

import time
import uuid

import pytest

from bench.rucio_server import SCOPE, RucioServer
from nodepilot.config import PilotConfig
from nodepilot.queue.model import Endpoint
from services.stager.paths import deterministic_path
from tests.conftest import running_service
from tests.stager.test_stager_service import adler32, answer, send, workdir

LAN, WAN = "XRD_RSE", "POSIX_RSE"  # the queue reads from XRD_RSE on its LAN; POSIX_RSE is WAN to it


def seed(server: RucioServer, lfn: str, data: bytes, rses: tuple[str, ...]) -> None:
    """A file written on each RSE's storage at Rucio's path, then registered with Rucio's own client."""
    relative = deterministic_path(SCOPE, lfn)
    for rse in rses:
        if rse == LAN:
            server.xrootd.put(relative, data)
        else:
            path = server.posix_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    files = [{"scope": SCOPE, "name": lfn, "bytes": len(data), "adler32": adler32(data)}]
    server.tool("register", {"replicas": {rse: files for rse in rses}})


def configure(cfg: PilotConfig, server: RucioServer, monkeypatch: pytest.MonkeyPatch, **rucio: object) -> None:
    monkeypatch.setenv("RUCIO_CONFIG", str(server.client_config))
    cfg.queuedata.site = "TEST_SITE"
    cfg.queuedata.stager = {"rucio": {"allow_wan": True, **rucio}, "backoff_s": 0.0}
    lan, wan = Endpoint(LAN, f"rucio:///{LAN}"), Endpoint(WAN, f"rucio:///{WAN}")
    cfg.queuedata.endpoints = {"read_lan": [lan], "write_lan": [lan], "pl": [wan]}
    cfg.queuedata.copytools = {activity: ["rucio"] for activity in cfg.queuedata.endpoints}
    cfg.save()


def endpoints(*rses: str) -> list[dict[str, str]]:
    return [{"name": rse, "url": f"rucio:///{rse}"} for rse in rses]


def wait_traces(server: RucioServer, wanted: list[tuple[str, str, str]], timeout: float = 20.0) -> list[dict]:
    """Rucio's trace file until it has a trace (filename, remoteSite, clientState) for each of ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        traces = server.traces()
        seen = {(t.get("filename"), t.get("remoteSite"), t.get("clientState")) for t in traces}
        missing = [w for w in wanted if w not in seen]
        if not missing:
            return traces
        assert time.monotonic() < deadline, f"traces missing from Rucio: {missing}; seen {sorted(seen)}"
        time.sleep(0.1)


def name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.dat"


def test_stage_in_through_rucio(rds, pilot_config, rucio_server, monkeypatch):
    both, wan_only, corrupt, unknown = name("both"), name("wan"), name("corrupt"), name("unknown")
    data = {lfn: f"{lfn} ".encode() * 5000 for lfn in (both, wan_only, corrupt)}
    seed(rucio_server, both, data[both], (LAN, WAN))
    seed(rucio_server, wan_only, data[wan_only], (WAN,))
    seed(rucio_server, corrupt, data[corrupt], (LAN, WAN))
    rucio_server.xrootd.corrupt(deterministic_path(SCOPE, corrupt))  # the LAN copy, behind Rucio's back
    configure(pilot_config, rucio_server, monkeypatch)
    files = [{"lfn": lfn, "scope": SCOPE, "guid": f"g-{lfn}", "dataset": "tests:ds"}
             for lfn in (both, wan_only, corrupt, unknown)]
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 401, "401:1:stagein", endpoints=endpoints(LAN), files=files)
        event = answer(rds, 401, "stagein")
        traces = wait_traces(rucio_server, [(both, LAN, "DONE"), (wan_only, WAN, "DONE"),
                                            (corrupt, LAN, "AD_MISMATCH"), (corrupt, WAN, "DONE")])
    got = {f["lfn"]: f for f in event["files"]}
    wd = workdir(pilot_config, 401)
    assert got[both]["status"] == "done" and got[both]["endpoint"] == LAN
    assert got[both]["surl"].startswith(f"root://127.0.0.1:{rucio_server.xrootd.port}//")
    assert got[wan_only]["status"] == "done" and got[wan_only]["endpoint"] == WAN
    assert got[corrupt]["status"] == "done" and got[corrupt]["endpoint"] == WAN
    assert "adler32 mismatch" in got[corrupt]["diag"] and LAN in got[corrupt]["diag"]
    for lfn in data:
        assert (wd / lfn).read_bytes() == data[lfn]
        assert got[lfn]["checksum"] == f"ad:{adler32(data[lfn])}" and got[lfn]["fsize"] == len(data[lfn])
    assert got[unknown]["status"] == "failed" and got[unknown]["error_code"] == 1100
    assert event["ok"] is False and event["error_code"] == 1100
    done = next(t for t in traces if t["filename"] == both and t["clientState"] == "DONE")
    assert done["eventType"] == "get_sm" and done["scope"] == SCOPE and done["dataset"] == "tests:ds"
    assert done["protocol"] == "root" and done["pq"] == pilot_config.site and done["filesize"] == len(data[both])
    assert done["guid"] == f"g-{both}" and done["transferStart"] <= done["timeEnd"]


def test_lan_only_queue_finds_no_replica_on_wan(rds, pilot_config, rucio_server, monkeypatch):
    wan_only = name("wan")
    seed(rucio_server, wan_only, b"far away", (WAN,))
    configure(pilot_config, rucio_server, monkeypatch, allow_wan=False)
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 402, "402:1:stagein", endpoints=endpoints(LAN),
             files=[{"lfn": wan_only, "scope": SCOPE}])
        event = answer(rds, 402, "stagein")
    assert event["error_code"] == 1100 and "WAN replicas not allowed" in event["diag"]


def test_files_are_copied_in_the_order_rucio_answers_for_them(rds, pilot_config, rucio_server, monkeypatch):
    """Rucio lists a request's files by name, not in the request's order: a file takes one of the request's
    copy slots once its own line came, so that the first answered are copied first."""
    tag = uuid.uuid4().hex[:8]
    lfns = [f"{stem}-{tag}.dat" for stem in ("c", "b", "a")]  # the request's order: Rucio's reversed
    for lfn in lfns:
        seed(rucio_server, lfn, lfn.encode() * 100, (LAN,))
    configure(pilot_config, rucio_server, monkeypatch)
    pilot_config.queuedata.stager["files_per_request"] = 1
    pilot_config.save()
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 405, "405:1:stagein", endpoints=endpoints(LAN),
             files=[{"lfn": lfn, "scope": SCOPE} for lfn in lfns])
        event = answer(rds, 405, "stagein")
        traces = wait_traces(rucio_server, [(lfn, LAN, "DONE") for lfn in lfns])
    assert event["ok"] is True, event["diag"]
    copies = sorted((t for t in traces if t["filename"] in lfns), key=lambda t: (t["transferStart"], t["timeEnd"]))
    assert [t["filename"] for t in copies] == sorted(lfns)


def test_direct_access_gives_rucios_turl(rds, pilot_config, rucio_server, monkeypatch):
    lfn = name("direct")
    seed(rucio_server, lfn, b"read in place" * 100, (LAN, WAN))
    configure(pilot_config, rucio_server, monkeypatch)
    pilot_config.queuedata.direct_access_lan = True
    pilot_config.save()
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 403, "403:1:stagein", endpoints=endpoints(LAN),
             files=[{"lfn": lfn, "scope": SCOPE}], direct_access=True)
        event = answer(rds, 403, "stagein")
    (f,) = event["files"]
    expected = f"root://127.0.0.1:{rucio_server.xrootd.port}//se/{deterministic_path(SCOPE, lfn)}"
    assert f["status"] == "direct" and f["turl"] == expected and f["endpoint"] == LAN
    assert list(workdir(pilot_config, 403).iterdir()) == []


@pytest.mark.parametrize("registration", ["pilot", "server"])
def test_stage_out_and_log_registered(rds, pilot_config, rucio_server, monkeypatch, registration):
    out, logname = name("out"), name("log").replace(".dat", ".tgz")
    payload = b"payload output " * 20000
    configure(pilot_config, rucio_server, monkeypatch, registration=registration)
    wd = workdir(pilot_config, 404)
    (wd / out).write_bytes(payload)
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stageout", 404, "404:1:stageout", endpoints=endpoints(LAN),
             files=[{"lfn": out, "scope": SCOPE, "guid": "g-out", "dataset": "tests:ds"}])
        stored = answer(rds, 404, "stageout")
        send(rds, pilot_config, "stagelog", 404, "404:2:stagelog", endpoints=endpoints(WAN),
             log={"lfn": logname, "scope": SCOPE, "guid": "g-log"}, tarball_dir="tarball_PandaJob_404")
        logged = answer(rds, 404, "stagelog")
        wait_traces(rucio_server, [(out, LAN, "DONE"), (logname, WAN, "DONE")])
    assert stored["ok"] is True, stored["diag"]
    assert logged["ok"] is True, logged["diag"]
    (o,), (lg,) = stored["files"], logged["files"]
    assert o["endpoint"] == LAN and o["checksum"] == f"ad:{adler32(payload)}"
    assert rucio_server.xrootd.read(deterministic_path(SCOPE, out)) == payload
    assert (rucio_server.posix_dir / deterministic_path(SCOPE, logname)).stat().st_size == lg["fsize"]
    listed = {r["name"]: r for r in rucio_server.tool("list", {"dids": [{"scope": SCOPE, "name": out},
                                                                        {"scope": SCOPE, "name": logname}]})}
    if registration == "server":  # stored, left for the server side to register
        assert listed == {}
        return
    assert listed[out]["adler32"] == adler32(payload) and listed[out]["bytes"] == len(payload)
    assert list(listed[out]["rses"]) == [LAN]
    assert listed[logname]["adler32"] == lg["checksum"].removeprefix("ad:") and list(listed[logname]["rses"]) == [WAN]
