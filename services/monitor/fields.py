"""The fields of a job's updates to the server: heartbeats and the final update (legacy names; each
dialect's client renames them, see docs/protocol.md section 3).

- Every update: identity, state, where and when, and the node's x86-64 level.
- Once the payload runs: the CPU seconds (``cpuConsumptionUnit`` ``s+<CPU model>+<widest SIMD
  flag>``) and the memory and I/O figures measured so far (the runner's usage summary of its
  samples, in its Redis hash), as the reference pilot's heartbeats carry them; after the payload,
  the figures of its end.
- The final update: end time, error codes, timings, the output file report, job metrics, and
  ``metaData``: the payload's job report, else a minimal JSON report of the pilot's own (the
  server parses metaData as JSON).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from nodepilot.config import PilotConfig
from nodepilot.cpuinfo import cpu_info
from nodepilot.job import Job
from nodepilot.outbox import file_report, jobmetrics, pilot_timing
from nodepilot.timeutil import panda_time
from nodepilot.values import measured
from nodepilot.worker import batch_system, pilot_id

if TYPE_CHECKING:
    from services.monitor.result import JobResult

# the runner's usage summary -> update fields (kB, bytes, bytes/s)
USAGE_FIELDS = {
    "max_rss_kb": "maxRSS", "max_pss_kb": "maxPSS", "max_vmem_kb": "maxVMEM", "max_swap_kb": "maxSWAP",
    "avg_rss_kb": "avgRSS", "avg_pss_kb": "avgPSS", "avg_vmem_kb": "avgVMEM", "avg_swap_kb": "avgSWAP",
    "tot_rbytes": "totRBYTES", "tot_wbytes": "totWBYTES", "rate_rbytes": "rateRBYTES", "rate_wbytes": "rateWBYTES",
}
PILOT_NAME = "nodepilot"


def _number(value: Any) -> int | None:
    read = measured(value)
    return None if read is None else int(read)


def usage_figures(usage: dict[str, Any]) -> dict[str, Any]:
    """CPU time and unit and the memory and I/O figures of a usage summary (None: not measured)."""
    cpu = usage.get("cpu_seconds")
    cpu = cpu if isinstance(cpu, int | float) and not isinstance(cpu, bool) else None
    figures: dict[str, Any] = {"cpuConsumptionTime": round(cpu) if cpu is not None else None}
    if cpu is not None:
        figures.update(cpuConsumptionUnit=cpu_info().consumption_unit, cpuConversionFactor=1.0)
    figures.update({name: _number(usage.get(key)) for key, name in USAGE_FIELDS.items()})
    return figures


def own_report(result: JobResult) -> str:
    """The minimal job report the pilot sends as metaData when the payload wrote none."""
    code = result.trans_exit_code if result.trans_exit_code is not None else result.pilot_error_code
    message = result.exe_error_diag or result.pilot_error_diag or ("OK" if not code else f"exit code {code}")
    return json.dumps({"exitCode": code, "exitMsg": message, "pilot": PILOT_NAME})


def job_update(job: Job, config: PilotConfig, result: JobResult, payload: dict[str, Any],
                  staged: list[dict[str, Any]], *, final: bool, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One update. ``payload``: the runner's payload_finished event ({} while the payload runs);
    ``usage``: the usage summary so far (for heartbeats while the payload runs)."""
    batch, batch_id = batch_system()
    fields: dict[str, Any] = {
        "jobId": job.panda_id, "state": result.state, "timestamp": panda_time(time.time()),
        "siteName": config.queue, "node": config.node,
        "attemptNr": job.attempt_nr, "schedulerID": "nodepilot", "pilotID": pilot_id(config.pilot_id_tag),
        "batchID": batch_id or None, "startTime": panda_time(result.start_time), "coreCount": job.core_count,
        # under this name both dialects take it (the legacy updateJob's keyword is the v1 name)
        "cpu_architecture_level": cpu_info().architecture_level,
    }
    if payload:
        fields.update(usage_figures({**payload, "cpu_seconds": payload.get("cpu_seconds") or 0}),
                      nEvents=payload.get("n_events") or None)
    elif usage:
        fields.update(usage_figures(usage))
    if final:
        fields.update(
            endTime=panda_time(result.end_time), pilotErrorCode=result.pilot_error_code,
            pilotErrorDiag=result.pilot_error_diag or None, transExitCode=result.trans_exit_code,
            exeErrorCode=result.exe_error_code, exeErrorDiag=result.exe_error_diag or None,
            pilotTiming=pilot_timing(result.timings), metaData=payload.get("report_text") or own_report(result),
            xml=file_report(staged) or None,
            jobMetrics=jobmetrics({"coreCount": job.core_count, "nInputFiles": result.files_in,
                                   "nOutputFiles": result.files_out, "batchSystem": batch,
                                   "maxGPUMemKB": payload.get("max_gpu_mem_kb") or None,
                                   "avgGPUUtil": payload.get("avg_gpu_util_pct") or None,
                                   "isolation": payload.get("isolation")}),
        )
    return {k: v for k, v in fields.items() if v is not None}
