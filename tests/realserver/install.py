"""Install what the suite needs: Debian's PostgreSQL 15 with pg_cron and pg_partman, apxs (the
server's wheel builds mod_wsgi), and panda-server 1.0.4 with gunicorn in a venv of its own,
kept between runs in ``$NODEPILOT_REALSERVER_HOME`` (default ``~/.cache/nodepilot-realserver``).

    python -m tests.realserver.install      # what ``make test-realserver`` runs first

Nothing is reinstalled when present. The first venv install takes a few minutes (about 670 MB).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.realserver.database import PG_BIN

PANDA_SERVER = "panda-server[postgres]==1.0.4"
PANDA_VERSION = "1.0.4"
APT_PACKAGES = ("postgresql-15", "postgresql-15-cron", "postgresql-15-partman", "apache2-dev")
PG_LIB = Path("/usr/lib/postgresql/15/lib")
PIP_TIMEOUT_S = 1800
APT_TIMEOUT_S = 1200


def home() -> Path:
    return Path(os.environ.get("NODEPILOT_REALSERVER_HOME", "~/.cache/nodepilot-realserver")).expanduser()


def venv_dir() -> Path:
    return home() / "venv"


def missing_system_parts() -> list[str]:
    """What of PostgreSQL 15, its two extensions and apxs this machine lacks."""
    checks = {"postgresql-15": PG_BIN / "postgres", "postgresql-15-cron": PG_LIB / "pg_cron.so",
              "postgresql-15-partman": PG_LIB / "pg_partman_bgw.so"}
    missing = [pkg for pkg, path in checks.items() if not path.exists()]
    if not (shutil.which("apxs") or shutil.which("apxs2")):
        missing.append("apache2-dev")
    return missing


def ensure_system_packages() -> None:
    missing = missing_system_parts()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages (install them as root): {' '.join(missing)}")
    subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", *missing], check=True,
                   timeout=APT_TIMEOUT_S, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def venv_ready() -> bool:
    python = venv_dir() / "bin" / "python"
    if not (python.exists() and (venv_dir() / "bin" / "gunicorn").exists()):
        return False
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('panda-server'))"],
                           capture_output=True, text=True, timeout=60)
    return probe.returncode == 0 and probe.stdout.strip() == PANDA_VERSION


def ensure_venv() -> Path:
    """The server's venv, installed when absent. As root, pip runs with an unprivileged group: the
    server's wheel build hook looks up a service account otherwise (and fails)."""
    if venv_ready():
        return venv_dir()
    venv_dir().parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv_dir())], check=True, timeout=300)
    pip = [str(venv_dir() / "bin" / "pip"), "install", PANDA_SERVER, "gunicorn"]
    if os.geteuid() == 0:
        pip = ["setpriv", "--regid", "65534", "--clear-groups", *pip]
    subprocess.run(pip, check=True, timeout=PIP_TIMEOUT_S, env={**os.environ, "DISABLE_MM": "1"})
    if not venv_ready():
        raise SystemExit(f"{PANDA_SERVER} did not install into {venv_dir()}")
    return venv_dir()


def main() -> int:
    ensure_system_packages()
    print(f"panda-server {PANDA_VERSION}: {ensure_venv()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
