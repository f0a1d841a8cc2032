"""The activity names of queue definitions, and the order in which they stand in for one another.

An activity is looked up in ``acopytools``/``astorages`` (CRIC) or ``endpoints``/``copytools`` (our own
settings) under its own name first, then under the names after it here, as the reference pilot does, plus
the old CRIC roles ``pr``/``pw`` that real queue definitions still carry (docs/queues.md).
"""

from __future__ import annotations

READ = "read_lan"
WRITE = "write_lan"
LOG = "pl"
ES = "es_events"
LOG_SE = "log_se"  # ours: the secondary log SE (services/stager), never a fallback of another activity

FALLBACKS: dict[str, tuple[str, ...]] = {
    READ: (READ, "default", "pr"),
    WRITE: (WRITE, "w", "default", "pw"),
    LOG: (LOG, WRITE, "w", "default", "pw"),
    ES: (ES, "pw", "default", WRITE, "w"),
}

# the activities the pilot moves files for, with the direction of the transfer
DIRECTION = {READ: "in", WRITE: "out", LOG: "out", ES: "out"}


def lookup_order(activity: str) -> tuple[str, ...]:
    """``activity`` then its stand-ins; an activity not listed stands alone."""
    return FALLBACKS.get(activity, (activity,))


def first_present(activity: str, table: dict[str, list]) -> tuple[str, list]:
    """The first name in the lookup order with a non-empty entry in ``table``: (name, entry), or ("", [])."""
    for name in lookup_order(activity):
        entry = table.get(name)
        if entry:
            return name, entry
    return "", []
