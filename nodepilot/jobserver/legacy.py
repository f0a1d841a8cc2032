"""The local job server's handlers of the legacy API (``/server/panda/<method>``).

As in pandaserver/server/panda.py and jobdispatcher/JobDispatcher.py: the parameters are passed
to the functions as keyword arguments (an unknown one fails the call: HTTP 500) and arrive as
strings from a form; the functions convert what they need. Replies are the ``Protocol.Response``
data: JSON when the request's Accept contains application/json, else URL-encoded (non-text values
as Python's str(), as ``urlencode`` makes them).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from nodepilot.jobserver.api import VALID_JOB_STATES, Dispatcher
from nodepilot.jobserver.events import event_update
from nodepilot.values import whole_number

log = logging.getLogger(__name__)

SC_SUCCESS, SC_NO_JOBS, SC_FAILED = 0, 20, 30


def encode(data: dict[str, Any], accept_json: bool) -> tuple[str, str]:
    """(body, content type) as ``Protocol.Response.encode`` and the WSGI entry point make them."""
    if accept_json:
        return json.dumps(data), "application/json"
    return urlencode(data), "text/plain"


class LegacyApi:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.methods: dict[str, Callable[..., dict[str, Any]]] = {
            "getJob": self.getJob, "updateJob": self.updateJob,
            "getEventRanges": self.getEventRanges, "updateEventRanges": self.updateEventRanges,
            "updateWorkerPilotStatus": self.updateWorkerPilotStatus}
        self._lock = threading.Lock()
        self._params: dict[str, Any] = {}
        self._accept_json = False

    def call(self, method: str, params: dict[str, Any], accept_json: bool) -> dict[str, Any]:
        """Call a handler with the parameters as keyword arguments; a TypeError (unknown or missing
        parameter) or ValueError (a number that is not one) propagates: the caller answers 500."""
        with self._lock:
            self._params, self._accept_json = params, accept_json
            return self.methods[method](**params)

    # --- the keyword arguments are those of the real functions ---------------------------------
    def getJob(self, siteName, token=None, timeout=60, cpu=None, mem=None, diskSpace=None,
               prodSourceLabel=None, node=None, computingElement=None, AtlasRelease=None,
               prodUserID=None, getProxyKey=None, countryGroup=None, workingGroup=None,
               allowOtherCountry=None, taskID=None, nJobs=None, background=None, resourceType=None,
               harvester_id=None, worker_id=None, schedulerID=None, jobType=None, viaTopic=None,
               ) -> dict[str, Any]:
        served, n_sent = self.dispatcher.take(whole_number(nJobs) or 1, self._params)
        if not served:
            return {"StatusCode": SC_NO_JOBS, **({"errorDialog": "no jobs in PanDA"} if self._accept_json else {})}
        # a definition that is not an object cannot be a reply: it goes out empty (the pilot rejects it)
        jobs = [{"StatusCode": SC_SUCCESS, **(d if isinstance(d, dict) else {}), "nSent": n_sent} for d in served]
        if nJobs is None:  # one job: the reply is the job
            return jobs[0]
        return {"StatusCode": SC_SUCCESS, "jobs": jobs if self._accept_json else json.dumps(jobs)}

    def updateWorkerPilotStatus(self, workerID, harvesterID, status, timeout=60, node_id=None) -> dict[str, Any]:
        if status not in ("started", "finished"):
            return {"StatusCode": SC_FAILED, "errorDialog": f"invalid worker state {status!r}"}
        self.store.record_worker_report("update_worker_status", self._params)
        return {"StatusCode": SC_SUCCESS}

    def updateJob(self, jobId, state, token=None, transExitCode=None, pilotErrorCode=None,
                  pilotErrorDiag=None, timestamp=None, timeout=60, xml="", node=None, workdir=None,
                  cpuConsumptionTime=None, cpuConsumptionUnit=None, remainingSpace=None,
                  schedulerID=None, pilotID=None, siteName=None, messageLevel=None, pilotLog="",
                  metaData="", cpuConversionFactor=None, exeErrorCode=None, exeErrorDiag=None,
                  pilotTiming=None, computingElement=None, startTime=None, endTime=None, nEvents=None,
                  nInputFiles=None, batchID=None, attemptNr=None, jobMetrics=None, stdout="",
                  jobSubStatus=None, coreCount=None, maxRSS=None, maxVMEM=None, maxSWAP=None,
                  maxPSS=None, avgRSS=None, avgVMEM=None, avgSWAP=None, avgPSS=None, totRCHAR=None,
                  totWCHAR=None, totRBYTES=None, totWBYTES=None, rateRCHAR=None, rateWCHAR=None,
                  rateRBYTES=None, rateWBYTES=None, corruptedFiles=None, meanCoreCount=None,
                  cpu_architecture_level=None) -> dict[str, Any]:
        if jobId == "NULL":
            return {"StatusCode": SC_SUCCESS}
        if state not in VALID_JOB_STATES:  # the real server acknowledges and drops it
            log.warning("updateJob %s: invalid state=%s ignored", jobId, state)
            return {"StatusCode": SC_SUCCESS}
        command = self.dispatcher.update(int(jobId), state, whole_number(attemptNr), self._params,
                                         startTime, endTime)
        return {"StatusCode": SC_SUCCESS, "command": command or "NULL"}

    def getEventRanges(self, pandaID, jobsetID, taskID=None, nRanges=10, timeout=60,
                       scattered=None, segment_id=None) -> dict[str, Any]:
        ranges = self.store.acquire_ranges(int(pandaID), whole_number(jobsetID), int(nRanges))
        log.info("getEventRanges of job %s: %d", pandaID, len(ranges))
        return {"StatusCode": SC_SUCCESS, "eventRanges": ranges if self._accept_json else json.dumps(ranges)}

    def updateEventRanges(self, eventRanges, timeout=120, version=0, pandaID=None) -> dict[str, Any]:
        version = whole_number(version) or 0
        returns, commands = event_update(self.store, eventRanges, version)
        if returns is None:
            return {"StatusCode": SC_FAILED, "errorDialog": "failed to convert eventRanges with json"}
        if version == 0:
            return {"StatusCode": SC_SUCCESS, "Returns": json.dumps(returns), "Command": json.dumps(commands)}
        return {"StatusCode": SC_SUCCESS, "Returns": returns, "Command": commands}
