"""Lenient readings of the values people and servers write: yes/no words and whole numbers, read
the same way everywhere (queue data, job definitions, the environment, the command line, reports).
"""

from __future__ import annotations

import math
import re
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "t", "y"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "f", "n"})
NULL_WORDS = frozenset({"", "null", "none"})  # PanDA's "NULL" and friends: not given
_WHOLE = re.compile(r"[+-]?\d+(\.0*)?")


def flag_or_none(value: Any) -> bool | None:
    """True/False for a bool or a yes/no word (any case, surrounding space ignored); None otherwise
    (nothing given, a null word, or a value that is no yes/no)."""
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    return True if text in TRUE_WORDS else False if text in FALSE_WORDS else None


def flag(value: Any, default: bool = False) -> bool:
    """A yes/no: ``default`` when nothing (or no yes/no word) is given."""
    read = flag_or_none(value)
    return default if read is None else read


def whole_number(value: Any) -> int | None:
    """An int from an int, an integral float or text such as " 42", "-3", "7.0"; None for anything
    else (a bool, a null word, a fraction, text that is no number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    if not _WHOLE.fullmatch(text):
        return None
    return int(text.split(".", 1)[0])


def measured(value: Any) -> float | None:
    """A measured number as JSON gives it (int or float, not a bool); None: not measured."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
