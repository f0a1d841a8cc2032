"""Times as the PanDA server wants them."""

from __future__ import annotations

from datetime import UTC, datetime


def panda_time(epoch: float | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` in UTC (older servers drop any other form)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
