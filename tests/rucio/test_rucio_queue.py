"""A queue whose copytool is ``rucio``: CRIC records (no ``arprotocols`` needed) and our own settings."""

from __future__ import annotations

import pytest

from nodepilot.queue.loader import load
from nodepilot.queue.model import Endpoint
from nodepilot.queue.schema import QueueConfigError
from tests.queue.cric import queue_record
from tests.queue.test_conversion import config


def rucio_record(**over) -> dict:
    return queue_record("TEST_Q", {"read_lan": ["SITE_XRD"], "write_lan": ["SITE_DAV"], "pl": ["SITE_DAV"]},
                        {"read_lan": ["rucio"], "write_lan": ["rucio"], "pl": ["rucio"]}, **over)


def test_cric_rucio_copytool_gives_rse_endpoints_and_replica_rules(tmp_path):
    queue = load(config(tmp_path, rucio_record(allow_wan=True)))
    assert queue.endpoints_for("read_lan") == [Endpoint("SITE_XRD", "rucio:///SITE_XRD", 101)]
    assert queue.endpoints_for("pl") == [Endpoint("SITE_DAV", "rucio:///SITE_DAV", 102)]
    assert queue.copytools["write_lan"] == ["rucio"]
    assert queue.stager == {"rucio": {"allow_lan": True, "allow_wan": True}}


def test_own_rucio_settings_checked(tmp_path):
    own = {"stager": {"rucio": {"registration": "server", "schemes": ["root"], "allow_wan": True}}}
    queue = load(config(tmp_path, rucio_record(), own))
    assert queue.stager["rucio"] == {"registration": "server", "schemes": ["root"], "allow_wan": True}
    with pytest.raises(QueueConfigError, match=r"stager.rucio.registration"):
        load(config(tmp_path, rucio_record(), {"stager": {"rucio": {"registration": "adder"}}}))
    with pytest.raises(QueueConfigError, match=r"stager.rucio.alow_wan: unknown setting"):
        load(config(tmp_path, rucio_record(), {"stager": {"rucio": {"alow_wan": True}}}))
