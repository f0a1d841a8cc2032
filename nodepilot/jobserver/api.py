"""The local job server's handlers of the new API (``/api/v1/pilot/...``, ``/api/v1/event/...``).

Parameters are checked as panda-server's ``request_validation`` (api/v1/common.py) does, against
signatures copied from pilot_api.py and event_api.py. The job logic both dialects share is the
``Dispatcher``.
"""

from __future__ import annotations

import inspect
import logging
import threading
import types
from collections.abc import Callable
from datetime import datetime
from typing import Any, Union, get_args, get_origin

from nodepilot.jobserver.store import JobCatalog, JobStore, served_definition

log = logging.getLogger(__name__)

SC_SUCCESS = 0
SC_INVALID = 50
VALID_JOB_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")
PANDA_TIME = "%Y-%m-%d %H:%M:%S"


def response(success: bool, message: str = "", data: Any = None) -> dict[str, Any]:
    return {"success": success, "message": message, "data": data}


# --- parameter validation as in panda-server's request_validation --------------------------
def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _accepts(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_accepts(value, arg) for arg in get_args(annotation))
    if origin is not None:  # list[int], dict[str, Any]: the container type, list items too
        if not isinstance(value, origin):
            return False
        args = get_args(annotation)
        return not (origin is list and args) or all(isinstance(item, args[0]) for item in value)
    if annotation is Any:
        return True
    return isinstance(value, annotation)


def call_validated(func: Callable[..., dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Bind ``params`` to ``func``'s signature and check each given value with isinstance against
    its annotation (so a JSON "12" for an int is refused, and true passes for an int, as there)."""
    sig = inspect.signature(func, eval_str=True)
    try:
        bound = sig.bind(**params)
    except TypeError as exc:
        return response(False, f"Argument error: {exc}")
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if param.annotation is inspect.Parameter.empty or param.default == value:
            continue
        if not _accepts(value, param.annotation):
            origin = get_origin(param.annotation)
            expected = origin if origin not in (None, Union, types.UnionType) else param.annotation
            return response(False, f"Type error: '{name}' must be of type {_type_name(expected)}, "
                                   f"got {type(value).__name__}.")
    return func(*bound.args, **bound.kwargs)


# --- what both dialects do ------------------------------------------------------------------
def panda_times(job_id: Any, **given: str | None) -> dict[str, str]:
    """The times given in the one form the real server stores; others are dropped (and logged)."""
    times = {}
    for key, value in given.items():
        if value is None:
            continue
        try:
            times[key] = datetime.strptime(value, PANDA_TIME).strftime(PANDA_TIME)
        except (TypeError, ValueError):
            log.warning("update of job %s: invalid %s=%r ignored", job_id, key, value)
    return times


class Dispatcher:
    """Hands out the catalog's definitions, each once, and applies updates (both dialects)."""

    def __init__(self, catalog: JobCatalog, store: JobStore) -> None:
        self.catalog, self.store = catalog, store
        self._lock = threading.Lock()

    def take(self, n_jobs: int, params: dict[str, Any]) -> tuple[list[Any], int]:
        """Up to ``n_jobs`` definitions as served, and how many were sent before (``nSent``)."""
        with self._lock:
            taken = self.store.dispatched_sources()
            picked = [(source, definition) for source, definition in self.catalog.scan()
                      if source not in taken][:max(1, n_jobs)]
            for source, definition in picked:
                self.store.record_dispatch(source, definition, params)
        if picked:
            log.info("dispatched %s", ", ".join(source for source, _ in picked))
        return [served_definition(definition) for _, definition in picked], len(taken)

    def update(self, job_id: int, status: str, attempt_nr: int | None, params: dict[str, Any],
               start_time: str | None, end_time: str | None) -> str | None:
        times = panda_times(job_id, start_time=start_time, end_time=end_time)
        command = self.store.record_update(job_id, status, attempt_nr, params, times)
        log.info("update of job %s: %s%s", job_id, status, f" -> {command}" if command else "")
        return command


class Handlers:
    """A set of handlers called one at a time, each seeing the call's parameters as received."""

    methods: dict[str, Callable[..., dict[str, Any]]]
    get_methods: frozenset[str] = frozenset()  # called with GET (query parameters); the others with POST

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self._lock = threading.Lock()
        self._params: dict[str, Any] = {}  # the call being served, as received (kept with updates)

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._params = params
            return call_validated(self.methods[method], params)


# --- the handlers: the signatures are those of pandaserver/api/v1/pilot_api.py ----------------
class PilotApi(Handlers):
    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.methods = {"acquire_jobs": self.acquire_jobs, "update_job": self.update_job,
                        "update_worker_status": self.update_worker_status,
                        "update_worker_node": self.update_worker_node,
                        "update_worker_node_gpu": self.update_worker_node_gpu}

    def acquire_jobs(
        self,
        site_name: str,
        timeout: int = 60,
        memory: int | None = None,
        disk_space: int | None = None,
        prod_source_label: str | None = None,
        node: str | None = None,
        computing_element: str | None = None,
        prod_user_id: str | None = None,
        get_proxy_key: str | None = None,
        task_id: int | None = None,
        n_jobs: int = 1,
        background: bool | None = None,
        resource_type: str | None = None,
        harvester_id: str | None = None,
        worker_id: int | None = None,
        scheduler_id: str | None = None,
        job_type: str | None = None,
        via_topic: bool | None = None,
        remaining_time=None,  # untyped in the real server, so never type-checked
        target_architecture: dict[str, Any] | str | None = None,
    ) -> dict[str, Any]:
        served, n_sent = self.dispatcher.take(n_jobs, self._params)
        if not served:
            return response(False, "No jobs in PanDA")
        jobs = [{**definition, "StatusCode": SC_SUCCESS, "nSent": n_sent} if isinstance(definition, dict)
                else definition for definition in served]  # broken ones as they are
        return response(True, data={"StatusCode": SC_SUCCESS, "jobs": jobs})

    def update_job(
        self,
        job_id: int,
        job_status: str,
        job_output_report: str = "",
        node: str | None = None,
        cpu_consumption_time: int | None = None,
        cpu_consumption_unit: str | None = None,
        scheduler_id: str | None = None,
        pilot_id: str | None = None,
        site_name: str | None = None,
        pilot_log: str = "",
        meta_data: str = "",
        cpu_conversion_factor: float | int | None = None,
        trans_exit_code: int | None = None,
        pilot_error_code: int | None = None,
        pilot_error_diag: str | None = None,
        exe_error_code: int | None = None,
        exe_error_diag: str | None = None,
        pilot_timing: str | None = None,
        start_time: str | None = None,
        end_time: str | None = None,
        n_events: int | None = None,
        n_input_files: int | None = None,
        batch_id: str | None = None,
        attempt_nr: int | None = None,
        job_metrics: str | None = None,
        stdout: str = "",
        job_sub_status: str | None = None,
        core_count: int | None = None,
        max_rss: int | float | None = None,
        max_vmem: int | float | None = None,
        max_swap: int | float | None = None,
        max_pss: int | float | None = None,
        avg_rss: int | float | None = None,
        avg_vmem: int | float | None = None,
        avg_swap: int | float | None = None,
        avg_pss: int | float | None = None,
        tot_rchar: int | float | None = None,
        tot_wchar: int | float | None = None,
        tot_rbytes: int | float | None = None,
        tot_wbytes: int | float | None = None,
        rate_rchar: int | float | None = None,
        rate_wchar: int | float | None = None,
        rate_rbytes: int | float | None = None,
        rate_wbytes: int | float | None = None,
        corrupted_files: str | None = None,
        mean_core_count: int | None = None,
        cpu_architecture_level: str | None = None,
        grid: str | None = None,
        source_site: str | None = None,
        destination_site: str | None = None,
        timeout: int = 60,
    ) -> dict[str, Any]:
        if job_status not in VALID_JOB_STATES:
            return response(False, f"Invalid job status: {job_status}", {"StatusCode": SC_INVALID})
        command = self.dispatcher.update(job_id, job_status, attempt_nr, self._params, start_time, end_time)
        return response(True, data={"StatusCode": SC_SUCCESS, "command": command})


    def update_worker_status(self, worker_id, harvester_id, status, timeout=60, node_id=None) -> dict[str, Any]:
        if status not in ("started", "finished"):
            return response(False, "Invalid worker state. The worker state has to be in ('started', 'finished')")
        self.store.record_worker_report("update_worker_status", self._params)
        return response(True)

    def update_worker_node(
        self,
        site: str,
        host_name: str,
        cpu_model: str,
        panda_queue: str | None = None,
        n_logical_cpus: int | None = None,
        n_sockets: int | None = None,
        cores_per_socket: int | None = None,
        threads_per_core: int | None = None,
        cpu_architecture: str | None = None,
        cpu_architecture_level: str | None = None,
        clock_speed: float | None = None,
        total_memory: int | None = None,
        total_local_disk: int | None = None,
        timeout: int = 60,
    ) -> dict[str, Any]:
        self.store.record_worker_report("update_worker_node", self._params)
        return response(True, "")

    def update_worker_node_gpu(
        self,
        site: str,
        host_name: str,
        vendor: str,
        model: str,
        count: int,
        vram: int | None = None,
        architecture: str | None = None,
        framework: str | None = None,
        framework_version: str | None = None,
        driver_version: str | None = None,
        timeout: int = 60,
    ) -> dict[str, Any]:
        self.store.record_worker_report("update_worker_node_gpu", self._params)
        return response(True, "")
