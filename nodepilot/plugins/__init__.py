"""Plug-ins found by entry point: the one way nodepilot loads experiment plug-ins
(``nodepilot.experiments``) and movers (``nodepilot.movers``).

A group may have built-ins (``name -> "module:attr"``) that need no installed entry point: a built-in
is imported directly, without the entry-point look-up (tens of ms that the default start-up does not
pay); an installed entry point of another name comes from the installed packages' metadata.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)


class PluginError(ValueError):
    """A plug-in that is not installed or cannot be loaded; the message says which and why."""


def import_spec(spec: str) -> Any:
    """The object a ``module:attr`` spec names."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def plugin_names(group: str, builtins: Mapping[str, str] | None = None) -> set[str]:
    return {ep.name for ep in entry_points(group=group)} | set(builtins or {})


def load_plugin(group: str, name: str, builtins: Mapping[str, str] | None = None, kind: str = "") -> Any:
    """The object the plug-in ``name`` of ``group`` names: a built-in, else an installed entry point.
    ``kind`` names the plug-ins in messages (default: the group)."""
    kind = kind or group
    try:
        if builtins and name in builtins:
            return import_spec(builtins[name])
        found = list(entry_points(group=group, name=name))
        if not found:
            raise PluginError(f"unknown {kind} plug-in {name!r}; installed: "
                              f"{', '.join(sorted(plugin_names(group, builtins)))}")
        return found[0].load()
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{kind} plug-in {name!r} cannot be loaded: {exc!r}") from exc


def load_all(group: str, builtins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every plug-in of the group that loads (installed entry points, then the built-ins no entry point
    replaces); one that does not load is logged and left out."""
    loaded: dict[str, Any] = {}
    specs = {ep.name: ep for ep in entry_points(group=group)}
    for name in [*specs, *(n for n in builtins or {} if n not in specs)]:
        try:
            loaded[name] = specs[name].load() if name in specs else import_spec((builtins or {})[name])
        except Exception:
            log.exception("%s plug-in %s cannot be loaded", group, name)
    return loaded
