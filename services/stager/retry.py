"""Back-off between attempts at the same endpoint."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> float:
    """The pause before retry number ``retry`` (1 for the first): ``base * 2^(retry-1)``, capped,
    then scaled by a random factor in [0.5, 1) so that many files failing together do not retry in step."""
    full = min(cap_s, base_s * 2 ** max(retry - 1, 0))
    return full * (0.5 + 0.5 * rng())
