"""Experiment plug-ins, found through the ``nodepilot.experiments`` entry points.

``generic`` (the default) is imported directly: looking entry points up costs tens of ms, which
the default pilot's start-up does not pay. Any other name is an entry point of an installed
package (pyproject.toml of nodepilot for ``toyexp``; a joining experiment ships its own).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodepilot.experiments.base import Experiment, setup_script
from nodepilot.plugins import PluginError, load_plugin, plugin_names
from nodepilot.reports import Reports, read_reports

log = logging.getLogger(__name__)

GROUP = "nodepilot.experiments"
DEFAULT = "generic"
BUILTINS = {DEFAULT: "nodepilot.experiments.generic:GenericExperiment"}

__all__ = ["DEFAULT", "GROUP", "Experiment", "UnknownExperiment", "available", "load", "name_for", "report_reader",
           "setup_script"]


class UnknownExperiment(ValueError):
    pass


def available() -> list[str]:
    return sorted(plugin_names(GROUP, BUILTINS))


@functools.cache
def load(name: str = "") -> Experiment:
    """The plug-in called ``name`` (one instance per process); raises UnknownExperiment."""
    name = name or DEFAULT
    try:
        instance = load_plugin(GROUP, name, BUILTINS, kind="experiment")()
    except PluginError as exc:
        raise UnknownExperiment(str(exc)) from exc
    except Exception as exc:
        raise UnknownExperiment(f"experiment plug-in {name!r} cannot be made: {exc!r}") from exc
    if not isinstance(instance, Experiment):
        raise UnknownExperiment(f"experiment plug-in {name!r} is not an Experiment")
    return instance


def name_for(pilot_user: str, queue_pilot_user: str = "") -> str:
    """The experiment of a pilot: ``--pilot-user`` (or NODEPILOT_PILOT_USER), else the queue data's."""
    return pilot_user or queue_pilot_user or DEFAULT


def report_reader(name: Any) -> Callable[[Path], Reports]:
    """The report reader of the experiment a run request names (the runner's side). A plug-in that
    cannot be loaded, or whose reader fails, never loses the payload's result: the generic reading
    is used and the reason noted in the pilot diag."""
    try:
        experiment = load(name if isinstance(name, str) else "")
    except UnknownExperiment as exc:
        log.error("%s: reading the generic job report", exc)
        return _noting(read_reports, f"{exc}: generic report read")

    def read(workdir: Path) -> Reports:
        try:
            return experiment.read_report(workdir)
        except Exception as exc:
            log.exception("experiment %s: report reader failed", experiment.name)
            return _noting(read_reports, f"{experiment.name} report reader failed ({exc!r}): generic report read")(
                workdir)

    return read


def _noting(read: Callable[[Path], Reports], note: str) -> Callable[[Path], Reports]:
    def noted(workdir: Path) -> Reports:
        reports = read(workdir)
        reports.notes.append(note)
        return reports

    return noted
