"""The payload's outcome, for any experiment: its exit status and the reports it left in its work dir.

Sources (docs/protocol.md section 5): ``jobReport.json`` (exitCode, exitMsg, exeErrorCode,
exeErrorDiag, resource.transform.processedEvents, files.output[].subFiles[]) and the simpler
``payload_error_report.json`` ({error_code, error_diag}). A report that is missing, too big or
malformed never fails the reading: it is noted in the pilot diag.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodepilot.errors import ErrorCode, clip_diag
from nodepilot.reports import SETUP_FAILED_MARK, STDERR, Reports, read_reports

STDERR_TAIL_BYTES = 64 * 1024
NOT_FOUND_MARKERS = ("command not found", "No such file")
# what runtimes print when an allocation fails (Python, C++, glibc, the JVM, bash)
OUT_OF_MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "OutOfMemoryError",
                         "out of memory", "Out of memory")
PILOT_CODES = frozenset(int(c) for c in ErrorCode)


@dataclass
class Outcome:
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    exe_error_code: int = 0
    exe_error_diag: str = ""
    n_events: int = 0
    report_text: str = ""
    output_guids: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stderr_tail(workdir: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    try:
        with (workdir / STDERR).open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - limit, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


# --- mapping -------------------------------------------------------------------------------
def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def effective_signal(exit_code: int | None, signum: int | None) -> int | None:
    """The signal that ended the payload, also when bash reported a child's death as 128+N."""
    if signum:
        return signum
    if exit_code is not None and 128 < exit_code <= 128 + signal.SIGRTMAX:
        return exit_code - 128
    return None


def outcome(workdir: Path, exit_code: int | None, signum: int | None, oom_kills: int = 0,
            read: Callable[[Path], Reports] | None = None) -> Outcome:
    """Pilot and exe error codes of a payload that ended with ``exit_code`` or ``signum``;
    ``oom_kills``: processes of the payload the kernel's OOM killer ended (from its cgroup);
    ``read``: the experiment plug-in's report reader (default: jobReport.json)."""
    reports = (read or read_reports)(workdir)
    result = Outcome(n_events=reports.n_events, report_text=reports.text, output_guids=reports.output_guids)
    tail = stderr_tail(workdir) if exit_code or signum else ""
    _classify(result, reports, exit_code, signum, tail)
    _out_of_memory(result, exit_code, signum, oom_kills, tail)
    _setup_failed(result, workdir, exit_code)
    if reports.notes:
        notes = "; ".join(reports.notes)
        result.pilot_error_diag = f"{result.pilot_error_diag}; {notes}" if result.pilot_error_diag else notes
    result.pilot_error_diag = clip_diag(result.pilot_error_diag)
    result.exe_error_diag = clip_diag(result.exe_error_diag)
    return result


def _classify(result: Outcome, reports: Reports, exit_code: int | None, signum: int | None, tail: str) -> None:
    sig = effective_signal(exit_code, signum)
    report_code = reports.exe_error_code or reports.exit_code or 0
    result.exe_error_diag = reports.diag
    if sig is not None:
        how = f" (exit code {exit_code} from the shell)" if not signum else ""
        code = ErrorCode.PAYLOAD_SIGSEGV if sig == signal.SIGSEGV else ErrorCode.PAYLOAD_FAILED
        result.pilot_error_code = code
        result.pilot_error_diag = f"payload killed by signal {signal_name(sig)} ({sig}){how}"
        result.exe_error_code = report_code or (exit_code or 0)
        return
    if reports.error_code:  # the payload's own word on what went wrong
        known = reports.error_code in PILOT_CODES
        result.pilot_error_code = reports.error_code if known else ErrorCode.PAYLOAD_FAILED
        result.exe_error_code = (report_code or exit_code or 0) if known else reports.error_code
        result.exe_error_diag = reports.error_diag or result.exe_error_diag or last_line(tail)
        result.pilot_error_diag = f"payload error report: {reports.error_diag or reports.error_code}"
        return
    if exit_code == 127 and any(marker in tail for marker in NOT_FOUND_MARKERS):
        result.pilot_error_code = ErrorCode.TRANSFORMATION_NOT_FOUND
        result.exe_error_code = 127
        result.exe_error_diag = result.exe_error_diag or last_line(tail)
        result.pilot_error_diag = f"transformation not found: {last_line(tail)}"
        return
    if exit_code:
        result.pilot_error_code = ErrorCode.PAYLOAD_FAILED
        result.exe_error_code = report_code or exit_code
        result.exe_error_diag = result.exe_error_diag or last_line(tail)
        result.pilot_error_diag = _joined(f"payload failed with exit code {exit_code}", result.exe_error_diag)
        return
    if exit_code is None:
        result.pilot_error_code = ErrorCode.PILOT_EXCEPTION
        result.pilot_error_diag = "the payload's exit status is unknown"
        return
    if report_code:  # exited 0, but its report says it failed
        result.pilot_error_code = ErrorCode.PAYLOAD_FAILED
        result.exe_error_code = report_code
        result.pilot_error_diag = _joined(f"payload exited 0 but its report says exit code {report_code}",
                                          reports.diag)
    else:
        result.exe_error_diag = ""


def _setup_failed(result: Outcome, workdir: Path, exit_code: int | None) -> None:
    """The site's envsetup or the experiment's setup failed: the payload never ran (1110)."""
    if not exit_code:
        return
    try:
        what = (workdir / SETUP_FAILED_MARK).read_text(errors="replace").strip()[:200]
    except OSError:
        return
    result.pilot_error_code = ErrorCode.SETUP_FAILED
    result.pilot_error_diag = f"payload setup: {what or 'failed'}"
    result.exe_error_code = exit_code


def _out_of_memory(result: Outcome, exit_code: int | None, signum: int | None, oom_kills: int, tail: str) -> None:
    """A failure caused by memory exhaustion is 1212, whatever else it looked like."""
    if result.pilot_error_code in (0, ErrorCode.PAYLOAD_OUT_OF_MEMORY) or not (exit_code or signum):
        return
    marker = next((m for m in OUT_OF_MEMORY_MARKERS if m in tail), None)
    if not oom_kills and marker is None:
        return
    why = (f"the kernel's OOM killer ended {oom_kills} process(es) of the payload" if oom_kills
           else f"the payload ran out of memory ({marker!r} in its stderr)")
    result.pilot_error_code = ErrorCode.PAYLOAD_OUT_OF_MEMORY
    result.pilot_error_diag = _joined(why, result.pilot_error_diag)


def _joined(what: str, detail: str) -> str:
    return f"{what}: {detail}" if detail else what
