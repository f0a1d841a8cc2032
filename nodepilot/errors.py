"""Pilot error codes as the PanDA server knows them (docs/protocol.md sections 6 and 7)."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    GENERAL = 1008
    DISK_SPACE = 1098
    STAGEIN_FAILED = 1099
    REPLICA_NOT_FOUND = 1100
    WORKDIR_TOO_BIG = 1104
    STDOUT_TOO_BIG = 1106
    SETUP_FAILED = 1110
    QUEUE_DATA = 1116
    OUTPUT_FILE_TOO_BIG = 1124
    STAGEOUT_FAILED = 1137
    MD5_MISMATCH_OUT = 1141
    KILLED_BY_SERVER = 1144
    MD5_MISMATCH_IN = 1145
    LOOPING_JOB = 1150
    STAGEIN_TIMEOUT = 1151
    STAGEOUT_TIMEOUT = 1152
    MISSING_OUTPUT = 1165
    ADLER32_MISMATCH_IN = 1171
    ADLER32_MISMATCH_OUT = 1172
    NO_PAYLOAD_REPORT = 1187
    ZERO_SIZE_OUTPUT = 1191
    SIGNAL_OTHER = 1200
    SIGTERM = 1201
    SIGQUIT = 1202
    SIGSEGV = 1203
    SIGXCPU = 1204
    SIGBUS = 1206
    SIGUSR1 = 1207
    SIGINT = 1208
    PAYLOAD_OUT_OF_MEMORY = 1212
    WALL_TIME = 1213
    UNKNOWN_PAYLOAD_FAILURE = 1220
    ES_RECOVERABLE = 1224
    ES_FATAL = 1228
    MEMORY_EXCEEDED = 1235
    ES_NO_EVENTS = 1238
    PILOT_EXCEPTION = 1301
    PAYLOAD_FAILED = 1305
    NO_STORAGE_PROTOCOL = 1313
    SERVER_COMMUNICATION = 1318
    LOG_CREATION_FAILED = 1320
    UNKNOWN_COPY_TOOL = 1323
    PAYLOAD_SIGSEGV = 1328
    MISSING_INPUT_ON_SE = 1331
    TRANSFORMATION_NOT_FOUND = 1346
    CONTAINER_IMAGE_NOT_FOUND = 1360
    PREEMPTION = 1379
    # not in the reference list: a job definition the pilot cannot run as given
    BAD_JOB_DEFINITION = 1008


class PilotError(Exception):
    """An error that fails one job with a pilot error code; never the pilot itself."""

    def __init__(self, code: int, diag: str) -> None:
        super().__init__(f"{int(code)}: {diag}")
        self.code = int(code)
        self.diag = diag


def clip_diag(diag: str, limit: int = 500) -> str:
    """The server keeps at most 500 characters of a diag: keep the head and say it was cut."""
    diag = " ".join(diag.split())
    return diag if len(diag) <= limit else diag[: limit - 3] + "..."
