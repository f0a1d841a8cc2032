"""pip's settings of this machine for an image build: ``python3 scripts/build_config.py DIR``.

Where the network inspects HTTPS, pip inside a build reaches its index only with the CA bundle the
host's pip uses; where the host uses another index, the build must use it too. This writes into DIR
(docker/build-config/, which the Dockerfile copies into its build stage only):

- ``ca-bundle.pem``: the bundle the host's pip trusts (PIP_CERT, pip's ``cert``, REQUESTS_CA_BUNDLE,
  SSL_CERT_FILE or the system's), with the extra certificates of /usr/local/share/ca-certificates
  that it lacks;
- ``pip.conf``: the index settings of the host's pip (its configuration files in pip's order, then
  PIP_* variables) that a container can reach (http and https URLs, not local paths), and ``cert``.

``python3 scripts/build_config.py --clean DIR`` removes them again. Only the standard library.
"""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

KEYS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "trusted-host": "PIP_TRUSTED_HOST",
        "timeout": "PIP_DEFAULT_TIMEOUT", "retries": "PIP_RETRIES"}
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WRITTEN = ("ca-bundle.pem", "pip.conf")


def config_files() -> list[Path]:
    """pip's configuration files, lowest priority first (site files of a virtualenv are not the host's)."""
    xdg = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    home = Path.home()
    files = [Path("/etc/pip.conf"), *(Path(d) / "pip" / "pip.conf" for d in reversed(xdg)),
             home / ".pip" / "pip.conf", Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def host_settings() -> dict[str, str]:
    """The [global] and [install] values of the host's pip for KEYS and ``cert``, environment last."""
    found: dict[str, str] = {}
    for path in config_files():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            print(f"build_config: {path} ignored: {exc}", file=sys.stderr)
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                found.update({k: v for k, v in parser.items(section) if k in (*KEYS, "cert", "default-timeout")})
    if "default-timeout" in found:
        found.setdefault("timeout", found.pop("default-timeout"))
    for key, var in (*KEYS.items(), ("cert", "PIP_CERT")):
        if os.environ.get(var):
            found[key] = os.environ[var]
    return found


def reachable(value: str) -> str:
    """The URLs of ``value`` a container can use (http and https, not the host's loopback or files)."""
    keep = [u for u in value.split() if u.startswith(("http://", "https://"))
            and not any(h in u for h in ("://localhost", "://127.", "://[::1]"))]
    return " ".join(keep)


def ca_bundle(settings: dict[str, str]) -> str:
    for candidate in (settings.get("cert"), os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                      str(SYSTEM_BUNDLE)):
        if candidate and Path(candidate).is_file():
            text = Path(candidate).read_text()
            break
    else:
        text = ""
    extra = sorted(EXTRA_CAS.rglob("*.crt")) if EXTRA_CAS.is_dir() else []
    for cert in extra:
        pem = cert.read_text().strip()
        if pem and pem not in text:
            text += ("" if text.endswith("\n") or not text else "\n") + pem + "\n"
    return text


def write(target: Path) -> None:
    settings = host_settings()
    target.mkdir(parents=True, exist_ok=True)
    lines = ["[global]"]
    for key in KEYS:
        value = settings.get(key, "")
        if key.endswith("url"):
            value = reachable(value)
        if value:
            lines.append(f"{key} = {value}")
    bundle = ca_bundle(settings)
    if bundle:
        (target / "ca-bundle.pem").write_text(bundle)
        lines.append("cert = /build-config/ca-bundle.pem")
    (target / "pip.conf").write_text("\n".join(lines) + "\n")


def clean(target: Path) -> None:
    for name in WRITTEN:
        (target / name).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--clean"]
    if len(args) != 1:
        print("usage: build_config.py [--clean] DIR", file=sys.stderr)
        return 2
    (clean if "--clean" in argv else write)(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
