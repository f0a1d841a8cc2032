"""/metrics of a real stager process, scraped over its Unix socket."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nodepilot.http import uds_client
from tests.conftest import running_service
from tests.stager.test_stager_service import answer, in_file, out_file, put_on_se, send, workdir


def scrape(cfg) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with uds_client(cfg.socket_path("stager")) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def test_metrics_count_transfers_bytes_and_durations(rds, pilot_config):
    data = b"0123456789" * 1000
    put_on_se(pilot_config, "demo.data", "a.dat", data)
    put_on_se(pilot_config, "demo.data", "b.dat", data)
    (workdir(pilot_config, 61) / "o.dat").write_bytes(b"out" * 100)
    with running_service("stager", pilot_config):
        before = scrape(pilot_config)
        send(rds, pilot_config, "stagein", 61, "61:1:stagein",
             files=[in_file("a.dat", data), in_file("b.dat", data), in_file("c.dat", data)])
        answer(rds, 61, "stagein")
        send(rds, pilot_config, "stageout", 61, "61:1:stageout", files=[out_file("o.dat")])
        answer(rds, 61, "stageout")
        after = scrape(pilot_config)
    assert ("nodepilot_stager_transfers_in_flight", ()) in before
    assert after[("nodepilot_stager_transfers_total",
                  (("direction", "in"), ("mover", "file"), ("status", "done")))] == 2
    assert after[("nodepilot_stager_transfers_total",
                  (("direction", "in"), ("mover", "file"), ("status", "failed")))] == 1
    assert after[("nodepilot_stager_transfers_total",
                  (("direction", "out"), ("mover", "file"), ("status", "done")))] == 1
    assert after[("nodepilot_stager_bytes_total", (("direction", "in"), ("mover", "file")))] == 2 * len(data)
    assert after[("nodepilot_stager_bytes_total", (("direction", "out"), ("mover", "file")))] == 300
    assert after[("nodepilot_stager_transfer_seconds_count", (("direction", "in"), ("mover", "file")))] == 2
    assert after[("nodepilot_stager_transfer_seconds_sum", (("direction", "in"), ("mover", "file")))] > 0
    assert after[("nodepilot_stager_transfers_in_flight", ())] == 0
    assert ("nodepilot_stager_traces_spooled", ()) in after
