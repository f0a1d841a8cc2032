"""The payload's outcome from its exit status and its reports (no processes, no Redis)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from nodepilot.errors import ErrorCode
from nodepilot.reports import ERROR_REPORT, JOB_REPORT, MAX_REPORT_BYTES, STDERR, read_limited, read_reports
from services.runner.report import effective_signal, outcome

REPORT = {
    "exitCode": 0, "exitMsg": "OK",
    "resource": {"transform": {"processedEvents": 250}},
    "files": {"output": [
        {"subFiles": [{"name": "out.1.root", "file_guid": "G-1", "file_size": 10, "nentries": 5},
                      {"name": "out.2.root", "file_guid": "G-2"}]},
        {"subFiles": [{"name": "hist.root", "file_guid": "G-3"}]},
    ]},
}


def write(workdir: Path, name: str, content: str | bytes | dict) -> str:
    text = json.dumps(content) if isinstance(content, dict) else content
    if isinstance(text, bytes):
        (workdir / name).write_bytes(text)
        return text.decode(errors="replace")
    (workdir / name).write_text(text)
    return text


def test_clean_exit_without_reports(tmp_path):
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == 0 and result.exe_error_code == 0
    assert result.pilot_error_diag == "" and result.exe_error_diag == ""
    assert result.report_text == "" and result.n_events == 0 and result.output_guids == {}


def test_clean_exit_with_report(tmp_path):
    text = write(tmp_path, JOB_REPORT, REPORT)
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == 0 and result.exe_error_code == 0 and result.exe_error_diag == ""
    assert result.n_events == 250
    assert result.output_guids == {"out.1.root": "G-1", "out.2.root": "G-2", "hist.root": "G-3"}
    assert result.report_text == text


def test_non_zero_exit_uses_last_stderr_line(tmp_path):
    write(tmp_path, STDERR, "warming up\nERROR: input file is corrupt\n\n")
    result = outcome(tmp_path, 3, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_FAILED
    assert result.exe_error_code == 3
    assert result.exe_error_diag == "ERROR: input file is corrupt"
    assert "exit code 3" in result.pilot_error_diag


def test_report_exit_code_and_message(tmp_path):
    write(tmp_path, JOB_REPORT, {**REPORT, "exitCode": 65, "exitMsg": "Transform athena failed: bad alloc"})
    write(tmp_path, STDERR, "something else\n")
    result = outcome(tmp_path, 65, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_FAILED
    assert result.exe_error_code == 65
    assert result.exe_error_diag == "Transform athena failed: bad alloc"
    assert result.n_events == 250


def test_report_exe_error_code_wins_over_exit_code(tmp_path):
    write(tmp_path, JOB_REPORT, {"exitCode": 1, "exitMsg": "", "exeErrorCode": 68, "exeErrorDiag": "no events"})
    result = outcome(tmp_path, 1, None)
    assert (result.pilot_error_code, result.exe_error_code) == (ErrorCode.PAYLOAD_FAILED, 68)
    assert result.exe_error_diag == "no events"


def test_report_failure_while_process_exited_zero(tmp_path):
    write(tmp_path, JOB_REPORT, {"exitCode": 40, "exitMsg": "validation failed"})
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_FAILED
    assert result.exe_error_code == 40
    assert result.exe_error_diag == "validation failed"
    assert "report says exit code 40" in result.pilot_error_diag


def test_error_report_with_pilot_code(tmp_path):
    write(tmp_path, ERROR_REPORT, {"error_code": 1360, "error_diag": "image docker://x not found"})
    result = outcome(tmp_path, 1, None)
    assert result.pilot_error_code == ErrorCode.CONTAINER_IMAGE_NOT_FOUND
    assert result.exe_error_code == 1
    assert result.exe_error_diag == "image docker://x not found"
    assert "image docker://x not found" in result.pilot_error_diag


def test_error_report_with_other_code_at_exit_zero(tmp_path):
    write(tmp_path, ERROR_REPORT, {"error_code": 7, "error_diag": "lost the database"})
    result = outcome(tmp_path, 0, None)
    assert (result.pilot_error_code, result.exe_error_code) == (ErrorCode.PAYLOAD_FAILED, 7)
    assert result.exe_error_diag == "lost the database"


def test_error_report_saying_nothing_is_fine(tmp_path):
    write(tmp_path, ERROR_REPORT, {"error_code": 0, "error_diag": ""})
    assert outcome(tmp_path, 0, None).pilot_error_code == 0


def test_malformed_report_is_noted_not_fatal(tmp_path):
    text = write(tmp_path, JOB_REPORT, '{"exitCode": 0, "exitMsg": "OK", "resource": ')
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == 0
    assert "jobReport.json is not valid JSON" in result.pilot_error_diag
    assert result.report_text == text


def test_malformed_report_on_failure_keeps_the_failure(tmp_path):
    write(tmp_path, JOB_REPORT, "[1, 2, 3]")
    write(tmp_path, ERROR_REPORT, b"\xff\xfe not json")
    result = outcome(tmp_path, 2, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_FAILED and result.exe_error_code == 2
    assert "jobReport.json is not a JSON object" in result.pilot_error_diag
    assert "payload_error_report.json is not valid JSON" in result.pilot_error_diag


def test_huge_report_is_ignored(tmp_path):
    big = '{"exitCode": 0, "pad": "' + "x" * MAX_REPORT_BYTES + '"}'
    write(tmp_path, JOB_REPORT, big)
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == 0
    assert result.report_text == ""
    assert "bigger than 10 MB" in result.pilot_error_diag


def test_read_limited_reads_at_most_the_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 101)
    assert read_limited(path, 100)[0] is None
    assert read_limited(path, 101) == ("a" * 101, "")
    assert read_limited(tmp_path / "absent") == (None, "")


def test_missing_and_odd_fields(tmp_path):
    write(tmp_path, JOB_REPORT, {"resource": {"transform": {"processedEvents": "many"}},
                                 "files": {"output": [3, {"subFiles": "no"}, {"subFiles": [
                                     {"name": "a.root"}, {"file_guid": "G"}, "x", {"name": 5, "file_guid": "H"},
                                     {"name": "ok.root", "file_guid": "G-ok"}]}]},
                                 "exitCode": "2", "exeErrorDiag": ["not", "text"]})
    reports = read_reports(tmp_path)
    assert reports.n_events == 0
    assert reports.output_guids == {"ok.root": "G-ok"}
    assert reports.exit_code == 2 and reports.exe_error_diag == ""
    write(tmp_path, JOB_REPORT, {})
    result = outcome(tmp_path, 0, None)
    assert result.pilot_error_code == 0 and result.n_events == 0 and result.output_guids == {}


def test_sigsegv_and_other_signals(tmp_path):
    result = outcome(tmp_path, None, signal.SIGSEGV)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_SIGSEGV
    assert "SIGSEGV" in result.pilot_error_diag
    result = outcome(tmp_path, None, signal.SIGKILL)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_FAILED
    assert "SIGKILL" in result.pilot_error_diag


def test_signal_reported_by_the_shell(tmp_path):
    assert effective_signal(139, None) == signal.SIGSEGV
    assert effective_signal(3, None) is None and effective_signal(0, None) is None
    result = outcome(tmp_path, 139, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_SIGSEGV and result.exe_error_code == 139
    assert "exit code 139 from the shell" in result.pilot_error_diag


def test_command_not_found(tmp_path):
    write(tmp_path, STDERR, "bash: line 2: my_transform.py: command not found\n")
    result = outcome(tmp_path, 127, None)
    assert result.pilot_error_code == ErrorCode.TRANSFORMATION_NOT_FOUND
    assert result.exe_error_code == 127
    assert "my_transform.py" in result.pilot_error_diag


def test_exit_127_without_the_message_is_a_plain_failure(tmp_path):
    write(tmp_path, STDERR, "my own reasons\n")
    assert outcome(tmp_path, 127, None).pilot_error_code == ErrorCode.PAYLOAD_FAILED


def test_unknown_exit_status(tmp_path):
    assert outcome(tmp_path, None, None).pilot_error_code == ErrorCode.PILOT_EXCEPTION


def test_diags_are_clipped(tmp_path):
    write(tmp_path, JOB_REPORT, {"exitCode": 9, "exitMsg": "m" * 2000})
    result = outcome(tmp_path, 9, None)
    assert len(result.exe_error_diag) <= 500 and len(result.pilot_error_diag) <= 500


def test_out_of_memory_is_1212(tmp_path):
    (tmp_path / STDERR).write_text("Traceback (most recent call last):\n  ...\nMemoryError\n")
    result = outcome(tmp_path, 1, None)
    assert result.pilot_error_code == ErrorCode.PAYLOAD_OUT_OF_MEMORY
    assert "MemoryError" in result.pilot_error_diag and "exit code 1" in result.pilot_error_diag
    (tmp_path / STDERR).write_text("terminate called after throwing an instance of 'std::bad_alloc'\n")
    assert outcome(tmp_path, None, 6).pilot_error_code == ErrorCode.PAYLOAD_OUT_OF_MEMORY
    (tmp_path / STDERR).write_text("")
    killed = outcome(tmp_path, None, 9, oom_kills=1)
    assert killed.pilot_error_code == ErrorCode.PAYLOAD_OUT_OF_MEMORY and "OOM killer" in killed.pilot_error_diag
    assert outcome(tmp_path, 0, None, oom_kills=0).pilot_error_code == 0
