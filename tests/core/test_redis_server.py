import stat

import redis

from nodepilot.redis_server import start_redis


def test_embedded_redis_is_private(tmp_path):
    server = start_redis(tmp_path / "r")
    try:
        r = redis.Redis.from_url(server.url)
        assert r.ping()
        assert r.config_get("port")["port"] == "0"  # no TCP at all
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "r" / "redis.conf").stat().st_mode) == 0o600
        try:
            redis.Redis(unix_socket_path=str(server.socket_path)).ping()
            raise AssertionError("a client without the password was let in")
        except redis.AuthenticationError:
            pass
        r.close()
    finally:
        server.stop()
    assert server.process.poll() is not None
