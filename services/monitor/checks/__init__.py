"""The watchdog's checks: one module per check (table in README.md)."""

from services.monitor.checks.base import Check, CheckContext, Firing

__all__ = ["Check", "CheckContext", "Firing"]
