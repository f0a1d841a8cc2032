"""What became of a job: its state, first error, timings and file counts (saved in Redis for a
restarted monitor, and the row of the pilot's summary)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nodepilot.errors import clip_diag

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    panda_id: int
    state: str = "starting"
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    exe_error_code: int = 0
    exe_error_diag: str = ""
    trans_exit_code: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    files_in: int = 0
    files_out: int = 0
    start_time: float | None = None
    end_time: float | None = None
    final_delivered: bool = False
    watchdog_check: str = ""  # the watchdog check that killed the payload, if one did

    def fail(self, code: int, diag: str) -> None:
        """Keep the first error as the job's; later ones only go to the log."""
        if self.pilot_error_code:
            log.info("job %s: further error %s: %s", self.panda_id, code, diag)
            return
        self.pilot_error_code = int(code)
        self.pilot_error_diag = clip_diag(diag)
