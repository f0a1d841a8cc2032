"""The reference PanDA pilot's command line: the options nodepilot has no use for, and the rules of the
values of those it uses (the server URL and port, resource types, yes/no).

``nodepilot start`` accepts the unused ones (so a site's command line works unchanged) and says once which were
ignored; the options that do something are real options of ``nodepilot start`` (README.md has the table).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from nodepilot.values import flag_or_none

REFERENCE_PORT = 25443  # the reference pilot's default server port (with --url)

# option spellings -> whether the option takes a value
IGNORED: dict[tuple[str, ...], bool] = {
    ("--cleanup",): True,
    ("-i", "--versiontag"): True,
    ("-z", "--noserverupdate"): False,
    ("--no-pilot-log",): False,
    ("--redirect-stdout",): True,
    ("-v", "--getjobrequests"): True,
    ("-x", "--getjobfailures"): True,
    ("-L", "--leasetime"): True,
    ("-r", "--resource"): True,
    ("-b", "--nocvmfs"): False,
    ("--harvester-workdir",): True,
    ("--harvester-datadir",): True,
    ("--harvester-eventstatusdump",): True,
    ("--harvester-workerattributes",): True,
    ("--harvester-submit-mode",): True,
    ("--input-dir",): True,
    ("--input-destination-dir",): True,
    ("--output-dir",): True,
    ("--hpc-resource",): True,
    ("--hpc-mode",): True,
    ("--es-executor-type",): True,
    ("--pod",): False,
    ("--prmon-cmd",): True,
    ("-t", "--noproxyverification"): False,
    ("-u", "--verifypayloadproxy"): False,
    ("-y", "--notokenrenewal"): False,
    ("--subscribe-to-msgsvc",): False,
    ("--use-https",): True,
    ("-g", "--baseurls"): True,
    ("--use-realtime-logging",): False,
    ("--realtime-logging-server",): True,
    ("--realtime-logname",): True,
    ("--use-rucio-traces",): True,
    ("--rucio-host",): True,
}
_TAKES_VALUE = {name: value for names, value in IGNORED.items() for name in names}


def split_ignored(args: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments without the ignored options, those options as given, e.g. ``-i PR``)."""
    kept: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            kept += args[i:]
            break
        name, eq, _ = arg.partition("=")
        if name in _TAKES_VALUE:
            if _TAKES_VALUE[name] and not eq and i + 1 < len(args):
                ignored.append(f"{arg} {args[i + 1]}")
                i += 2
                continue
            ignored.append(arg)
        else:
            kept.append(arg)
        i += 1
    return kept, ignored


def reference_url(url: str, port: int | None) -> str:
    """``--url`` (with or without a port; https:// when no scheme is given) and ``-p`` as one base URL: -p
    replaces the URL's port, a URL without one gets the reference pilot's default port."""
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url.rstrip("/"))
    try:
        has_port = parts.port is not None
    except ValueError:
        raise ValueError(f"--url {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"--url {url!r}: no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"--port {port}: expected a number from 1 to 65535")
    if has_port and port is None:
        return urlunsplit(parts)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}{host}:{port or REFERENCE_PORT}"
    return urlunsplit(parts._replace(netloc=netloc))


def check_resource_type(value: str) -> None:
    """The reference pilot's resource types: SCORE, MCORE, SCORE_*, MCORE_* (or none)."""
    if value and not re.fullmatch(r"(SCORE|MCORE)(_\w+)?", value):
        raise ValueError(f"--resource-type {value!r}: expected SCORE, MCORE, SCORE_<x> or MCORE_<x>")


def bool_option(name: str, value: str) -> bool:
    """The reference pilot's yes/no option values."""
    read = flag_or_none(value)
    if read is None:
        raise ValueError(f"{name} {value!r}: expected true or false")
    return read
