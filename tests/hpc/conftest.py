"""HPC modes as a user runs them: ``nodepilot serve``, ``nodepilot start --in-process``, ``nodepilot frontend``."""

from __future__ import annotations

from tests.e2e.conftest import job_server, site  # noqa: F401 - the same site and job server fixtures
