"""The generic experiment: every default of the interface (today's behaviour)."""

from __future__ import annotations

from nodepilot.experiments.base import Experiment


class GenericExperiment(Experiment):
    name = "generic"
