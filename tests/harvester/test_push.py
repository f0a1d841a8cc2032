"""Harvester push mode: the pilot driven through the shared-file messenger alone, Harvester's side played
by tests/harvester/harness.py. No server runs; one test listens where a server would be and sees nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harvester.harness import EXAMPLES, NODEPILOT, Harvester, finish, job, start_pilot
from tests.hpc.test_slurm import slurm_answers
from tests.waiting import wait_until


def harvester(tmp_path: Path) -> Harvester:
    return Harvester(tmp_path / "ap", tmp_path / "harvester-storage")


def test_a_job_through_the_files(tmp_path):
    h = harvester(tmp_path)
    h.feed(job(4711, "cat in1.dat in2.dat > out4711.txt", ("in1.dat", "in2.dat")),
           {"in1.dat": b"first input\n", "in2.dat": b"second input\n" * 1000})
    h.start()
    code, err = finish(start_pilot(h.access_point, "--harvester-wait", "1"))
    h.stop()
    assert code == 0, err[-3000:]
    final = h.final_attributes(4711)
    assert final["jobStatus"] == final["state"] == "finished" and final["pilotErrorCode"] == 0, final
    seen = {a["jobStatus"] for a in h.attributes if a.get("jobId") == 4711}  # those a 50 ms cycle caught
    assert seen <= {"starting", "running", "transferring", "finished"}, seen
    assert not {"xml", "outputfiles", "inputfiles"} & set(final)
    declared = h.check_declared(4711)
    assert [e["path"] for e in declared["output"]] == [str(h.access_point / "out4711.txt")]
    assert [Path(e["path"]).name for e in declared["log"]] == ["log4711.tgz"]
    assert (h.access_point / "out4711.txt").read_bytes() == b"first input\n" + b"second input\n" * 1000
    report = json.loads((h.access_point / "jobReport.json").read_text())
    assert report["exitCode"] == 0
    assert not (h.access_point / "HPCJobs.json").exists()  # read once
    assert (h.access_point / "kill_worker.json").exists()
    work = h.access_point / "PanDA_Pilot-4711"
    assert (work / "in1.dat").stat().st_ino == (h.storage / "in1.dat").stat().st_ino  # used in place, not copied


def test_a_failing_payload(tmp_path):
    h = harvester(tmp_path)
    h.spec_format = "cgi"  # the grid variant's format
    h.feed(job(4712, "echo partial > out4712.txt; exit 3"))
    h.start()
    code, err = finish(start_pilot(h.access_point, "--harvester-wait", "1"))
    h.stop()
    assert code == 0, err[-3000:]
    final = h.final_attributes(4712)
    assert final["jobStatus"] == "failed" and final["transExitCode"] == 3 and final["pilotErrorCode"], final
    assert "log" in h.check_declared(4712)  # the log goes out whatever happened
    assert json.loads((h.access_point / "jobReport.json").read_text())["exitCode"] == 3


def test_three_jobs_in_one_worker(tmp_path):
    h = harvester(tmp_path)
    h.refill_delay_s = 1.0  # Harvester takes its time: the pilot must wake when the file comes
    h.feed(job(5001, "echo one > out5001.txt"))
    h.queue = [(job(5002, "echo two > out5002.txt"), {}), (job(5003, "echo three > out5003.txt"), {})]
    h.start()
    started = time.monotonic()
    code, err = finish(start_pilot(h.access_point, "--harvester-wait", "4"))
    h.stop()
    assert code == 0, err[-3000:]
    for panda_id in (5001, 5002, 5003):
        assert h.final_attributes(panda_id)["jobStatus"] == "finished"
        assert set(h.check_declared(panda_id)) == {"output", "log"}
    assert h.job_requests == 3  # before the 2nd, the 3rd, and the one that never came
    assert (h.access_point / "kill_worker.json").exists()
    # the 10 s sleep loop of the reference pilot would take 2 x 10 s for the two refills alone
    assert time.monotonic() - started < 60


def test_a_malformed_job_spec(tmp_path):
    h = harvester(tmp_path)
    h.write_spec('{"4713": {"PandaID": 4713, "jobPars": ')  # cut short
    code, err = finish(start_pilot(h.access_point))
    h.cycle()
    assert code == 3, err[-3000:]
    assert "Traceback" not in err
    attributes = h.attributes[-1]
    assert attributes["jobStatus"] == "failed" and attributes["pilotErrorCode"] == 1008, attributes
    assert "HPCJobs.json" in attributes["pilotErrorDiag"] and "not valid JSON" in attributes["pilotErrorDiag"]


def test_a_job_spec_the_pilot_cannot_run(tmp_path):
    h = harvester(tmp_path)
    h.write_spec(json.dumps({"4714": {"attemptNr": 1, "logFile": "log4714.tgz"}}))  # no transformation
    code, err = finish(start_pilot(h.access_point, "--harvester-wait", "1"))
    h.cycle()
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    final = h.final_attributes(4714)
    assert final["pilotErrorCode"] == 1008 and "broken job definition" in final["pilotErrorDiag"], final


def test_sigterm_mid_job(tmp_path):
    h = harvester(tmp_path)
    h.feed(job(4715, "echo begun > out4715.txt; sleep 120"))
    h.start()
    proc = start_pilot(h.access_point, "--harvester-wait", "1")
    wait_until(lambda: any(a.get("jobStatus") == "running" for a in h.attributes), 60, "the payload running")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    h.stop()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    final = h.final_attributes(4715)
    assert final["jobStatus"] == "failed" and final["pilotErrorCode"] == 1201, final  # SIGTERM
    assert "log" in h.check_declared(4715)
    assert (h.access_point / "kill_worker.json").exists()


def test_no_connection_to_a_server_is_attempted(tmp_path):
    """A listener where the server would be (and as every proxy): it is never connected to."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.2)
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(listener.accept()[1])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    h = harvester(tmp_path)
    h.feed(job(4716, "echo x > out4716.txt"))
    proxy = f"http://127.0.0.1:{port}"
    env = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "ALL_PROXY": proxy, "NO_PROXY": "",
           "HARVESTER_ID": "harvester-1", "HARVESTER_WORKER_ID": "77"}
    h.start()
    code, err = finish(start_pilot(h.access_point, "--url", "127.0.0.1", "-p", str(port), "--harvester-wait", "1",
                                   env=env))
    h.stop()
    done.set()
    thread.join(5)
    listener.close()
    assert code == 0, err[-3000:]
    assert h.final_attributes(4716)["jobStatus"] == "finished"
    assert accepted == []


def es_job(panda_id: int, payload_args: str) -> dict:
    return {**job(panda_id, ""), "eventService": "True", "transformation": "python3",
            "jobPars": f"{EXAMPLES / 'es_payload.py'} {payload_args}", "outFiles": f"log{panda_id}.tgz"}


def es_ranges(n: int) -> list[dict]:
    return [{"eventRangeID": f"70-{i}-1-{i}-1", "startEvent": i * 10 + 1, "lastEvent": (i + 1) * 10,
             "LFN": "EVNT.pool.root", "GUID": "g", "scope": "demo"} for i in range(n)]


def reported_once(h: Harvester, panda_id: int) -> dict[str, str]:
    """Every range handed out reported exactly once: as an output in the status dump, or an event update."""
    statuses: dict[str, str] = {}
    for entry in [*h.declared.get(panda_id, []), *h.event_updates.get(panda_id, [])]:
        if entry.get("type") in ("log", "output"):
            continue
        rid = entry["eventRangeID"]
        assert rid not in statuses, f"{rid} reported twice"
        statuses[rid] = entry["eventStatus"]
    assert sorted(statuses) == sorted(h.handed_out), (sorted(statuses), sorted(h.handed_out))
    return statuses


def test_an_event_service_job_through_the_files(tmp_path):
    h = harvester(tmp_path)
    h.ranges[4720] = es_ranges(20)
    h.feed(es_job(4720, "--fail-every 5"))
    h.start()
    code, err = finish(start_pilot(h.access_point, "--harvester-wait", "5"), timeout=180)
    h.stop()
    assert code == 0, err[-3000:]
    assert h.final_attributes(4720)["jobStatus"] == "finished"
    statuses = reported_once(h, 4720)
    assert len(statuses) == 20
    assert sum(s == "finished" for s in statuses.values()) == 16
    assert sum(s == "failed" for s in statuses.values()) == 4
    assert len(h.check_declared(4720)["es_output"]) == 16  # each with its file, size and adler32 checked


def test_sigterm_mid_event_service_job(tmp_path):
    h = harvester(tmp_path)
    h.ranges[4721] = es_ranges(20)
    h.feed(es_job(4721, "--sleep 1"))
    h.start()
    proc = start_pilot(h.access_point, "--harvester-wait", "5")
    wait_until(lambda: len(h.declared.get(4721, [])) >= 2, 90, "two ranges done")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=180)
    h.stop()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    statuses = reported_once(h, 4721)  # the ranges in hand when the signal came too
    finished = sum(s == "finished" for s in statuses.values())
    assert 2 <= finished < len(statuses), statuses
    assert h.final_attributes(4721)["jobStatus"] == "failed"


def test_push_mode_from_the_environment_with_pilot3s_kill_file_name_and_a_heartbeat(tmp_path):
    """HARVESTER_ID with --harvester-submit-mode PUSH (the access point is the cwd, as sbatch -D sets it); the
    kill file under the reference pilot's own name; the heartbeat file the queue asks for kept fresh."""
    h = harvester(tmp_path)
    h.feed(job(4730, "sleep 3; echo x > out4730.txt"))
    h.start()
    proc = subprocess.Popen([*NODEPILOT, "start", "--harvester-submit-mode", "PUSH", "--harvester-kill-file",
                             "kill_worker", "--harvester-heartbeat", "0.01", "--harvester-wait", "1"],
                            cwd=h.access_point, env={**os.environ, "HARVESTER_ID": "h1", "HARVESTER_WORKER_ID": "9"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    beat = h.access_point / "worker_heartbeat.json"
    first = wait_until(lambda: beat.exists() and beat.stat().st_mtime, 60, "the heartbeat file")
    wait_until(lambda: beat.stat().st_mtime > first, 10, "the heartbeat file refreshed")
    code, err = finish(proc)
    h.stop()
    assert code == 0, err[-3000:]
    assert h.final_attributes(4730)["jobStatus"] == "finished"
    assert (h.access_point / "kill_worker").exists() and not (h.access_point / "kill_worker.json").exists()
    assert "accepted and ignored" not in err  # the options acted


def multijobs(tmp_path: Path, ids: list[int]) -> Path:
    """Harvester's MultiJobs layout: the PandaIDs at the worker's access point, each job in its own."""
    top = tmp_path / "ap"
    for panda_id in ids:
        Harvester(top / str(panda_id), tmp_path / "harvester-storage").feed(
            job(panda_id, f"echo {panda_id} > out{panda_id}.txt"))
    (top / "worker_pandaids.json").write_text(json.dumps(ids))
    return top


def check_multijobs(top: Path, ids: list[int]) -> None:
    for panda_id in ids:
        h = Harvester(top / str(panda_id), top.parent / "harvester-storage")
        h.cycle()
        assert h.final_attributes(panda_id)["jobStatus"] == "finished"
        assert set(h.check_declared(panda_id)) == {"output", "log"}
        assert (h.access_point / f"out{panda_id}.txt").read_text() == f"{panda_id}\n"


def test_multijobs_one_pilot_per_rank(tmp_path):
    top = multijobs(tmp_path, [4741, 4742])
    pilots = [start_pilot(top, "--harvester-wait", "0", env={"SLURM_PROCID": str(rank)}) for rank in (0, 1)]
    for proc in pilots:
        code, err = finish(proc)
        assert code == 0, err[-3000:]
    check_multijobs(top, [4741, 4742])


@pytest.mark.skipif(not slurm_answers(), reason="no Slurm controller here (tests/hpc/slurm-single-node.sh starts one)")
def test_multijobs_with_srun_inside_an_allocation(tmp_path):
    top = multijobs(tmp_path, [4751, 4752])
    result = subprocess.run(["salloc", "--nodes=1", "--ntasks=2", "--overcommit", "--time=2",
                             "--job-name=nodepilot-harvester", "srun", "--overcommit",
                             "--ntasks=2", f"--chdir={top}", *NODEPILOT, "start", "-z", "--harvester-workdir", str(top),
                             "--harvester-wait", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    check_multijobs(top, [4751, 4752])


def test_sigterm_while_waiting_for_the_next_job_and_in_one_process(tmp_path):
    h = harvester(tmp_path)
    h.feed(job(4760, "echo x > out4760.txt"))
    h.start()
    proc = start_pilot(h.access_point, "--harvester-wait", "300", "--in-process")
    wait_until(lambda: h.job_requests, 60, "the request for a second job")
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    h.stop()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert time.monotonic() - t < 30  # the wait ends with the signal, not after 300 s
    assert h.final_attributes(4760)["jobStatus"] == "finished"
    assert (h.access_point / "kill_worker.json").exists()
