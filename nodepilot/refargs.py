"""The reference PanDA pilot's options that factories and Harvester pass and nodepilot has no use for.

``nodepilot start`` accepts them (so a site's command line works unchanged) and says once which were
ignored; the options that do something are real options of ``nodepilot start`` (README.md has the table).
"""

from __future__ import annotations

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
    ("-k", "--noworkerpilotstatusupdate"): False,
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
