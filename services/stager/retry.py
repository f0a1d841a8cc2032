"""Back-off between attempts at the same endpoint: the pilot's one formula (nodepilot/retry.py) with
the queue's settings."""

from __future__ import annotations

import random
from collections.abc import Callable

from nodepilot import retry as policies


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> float:
    """The pause before retry number ``retry`` (1 for the first): ``base * 2^(retry-1)``, capped,
    then scaled by a random factor in [0.5, 1) so that many files failing together do not retry in step."""
    return policies.TRANSFER.but(first_s=base_s, cap_s=cap_s).pause(retry, rng)
