"""Where the ``rucio`` mover's credentials come from (the Rucio client file, the queue, the environment),
checked against the real Rucio server: userpass, a bearer token, a wrong password (one clear diag,
no secret in it), and a configuration that cannot work (said before any call)."""

from __future__ import annotations

import asyncio

from bench.rucio_server import PASSWORD, SCOPE
from nodepilot.queue.model import QueueData
from services.stager.movers.rucio import RucioMover
from services.stager.movers.rucio_client import RucioClient, RucioConfig, RucioError
from tests.conftest import running_service
from tests.stager.servers import free_ports
from tests.stager.test_stager_service import answer, send


def run(coro):
    return asyncio.run(coro)


def test_client_file_then_queue_then_environment(tmp_path):
    cfg_file = tmp_path / "rucio.cfg"
    cfg_file.write_text("[client]\nrucio_host = https://rucio.example.org\nauth_type = userpass\n"
                        "account = filer\nusername = u\npassword = p4ss\n")
    queue = QueueData(site="SITE_A", stager={"rucio": {"account": "queued", "host": "https://other.example.org"}})
    env = {"RUCIO_CONFIG": str(cfg_file), "RUCIO_ACCOUNT": "from-env"}
    mover = RucioMover(queue, env)
    cfg = mover.config
    assert (cfg.host, cfg.auth_host, cfg.account, cfg.username) == (
        "https://other.example.org", "https://other.example.org", "from-env", "u")
    assert "p4ss" not in repr(cfg) and cfg.problem() == ""
    assert mover.trace_url() == "https://other.example.org/traces/" and mover.settings.site == "SITE_A"


def test_x509_and_token_need_their_credentials(tmp_path):
    base = {"RUCIO_ACCOUNT": "a"}
    cfg = RucioConfig.load({"host": "https://r.example.org", "auth_type": "x509"}, base)
    assert "X509_USER_PROXY" in cfg.problem()
    proxy = tmp_path / "proxy"
    proxy.write_text("not read here")
    cfg = RucioConfig.load({"host": "https://r.example.org", "auth_type": "x509"}, {**base, "X509_USER_PROXY":
                                                                                    str(proxy)})
    assert cfg.problem() == "" and cfg.proxy == str(proxy)
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    cfg = RucioConfig.load({"host": "https://r.example.org", "auth_type": "token"},
                           {**base, "BEARER_TOKEN_FILE": str(token_file)})
    assert cfg.problem() == "" and cfg.token == "tok-123" and "tok-123" not in repr(cfg)
    assert "no Rucio host" in RucioConfig.load({}, {}).problem()


def test_userpass_and_bearer_token_against_rucio(rucio_server):
    cfg = RucioConfig.load(None, {"RUCIO_CONFIG": str(rucio_server.client_config)})

    async def token_then_list() -> tuple[str, list]:
        client = RucioClient(cfg)
        try:
            token = await client._token_now()
            return token, await client.list_replicas([(SCOPE, "nothing-here.dat")], ["root"], "")
        finally:
            await client.close()

    token, listed = run(token_then_list())
    assert token and listed == []
    # the same token given as a bearer token (auth type token): no authentication call at all
    bearer = RucioConfig.load({"host": rucio_server.url, "auth_type": "token", "account": "root"},
                              {"BEARER_TOKEN": token})

    async def with_bearer() -> list:
        client = RucioClient(bearer)
        try:
            return await client.protocols("XRD_RSE")
        finally:
            await client.close()

    assert [p["scheme"] for p in run(with_bearer())] == ["root"]


def test_wrong_password_is_one_clear_line_without_the_secret(rucio_server, tmp_path):
    bad = tmp_path / "rucio.cfg"
    bad.write_text(rucio_server.client_config.read_text().replace(PASSWORD, "wrong-secret-xyz"))
    cfg = RucioConfig.load(None, {"RUCIO_CONFIG": str(bad)})

    async def attempt() -> RucioError:
        client = RucioClient(cfg)
        try:
            await client.protocols("XRD_RSE")
        except RucioError as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("authenticated with a wrong password")

    exc = run(attempt())
    assert exc.status == 401 and "authentication" in str(exc)
    assert "wrong-secret-xyz" not in str(exc)


def test_rucio_not_answering_fails_the_file_with_one_line(tmp_path, rds, pilot_config, monkeypatch):
    (port,) = free_ports(1)
    cfg_file = tmp_path / "rucio.cfg"
    cfg_file.write_text(f"[client]\nrucio_host = http://127.0.0.1:{port}\nauth_type = userpass\naccount = root\n"
                        f"username = u\npassword = {PASSWORD}\n")
    monkeypatch.setenv("RUCIO_CONFIG", str(cfg_file))
    pilot_config.queuedata.stager = {"rucio": {}}
    pilot_config.save()
    with running_service("stager", pilot_config):
        send(rds, pilot_config, "stagein", 501, "501:1:stagein", endpoints=[{"name": "X", "url": "rucio:///X"}],
             files=[{"lfn": "a.dat", "scope": SCOPE}])
        event = answer(rds, 501, "stagein")
    assert event["error_code"] == 1099 and "ConnectError" in event["diag"] and PASSWORD not in event["diag"]
