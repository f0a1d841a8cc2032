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


def test_embedded_redis_dies_with_its_parent(tmp_path):
    """A pilot killed with SIGKILL must not leave its Redis running on the node."""
    import subprocess
    import sys
    import time

    import psutil

    code = ("import sys, time; from pathlib import Path; from nodepilot.redis_server import start_redis; "
            "s = start_redis(Path(sys.argv[1])); print(s.process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    redis_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(redis_pid)
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(redis_pid) and psutil.Process(redis_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "redis-server outlived its parent"
        time.sleep(0.05)
