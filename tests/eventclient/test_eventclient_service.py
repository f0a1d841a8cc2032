from nodepilot.http import uds_client
from tests.conftest import running_service


def test_eventclient_answers_health_and_status(pilot_config):
    with running_service("eventclient", pilot_config), uds_client(pilot_config.socket_path("eventclient")) as c:
        assert c.get("/healthz").json()["ok"] is True
        assert c.get("/status").json()["service"] == "eventclient"
