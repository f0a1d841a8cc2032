"""One reading of yes/no words and whole numbers for every input the pilot reads."""

from __future__ import annotations

import pytest

from nodepilot.values import flag, flag_or_none, measured, whole_number


@pytest.mark.parametrize("value", [True, "True", "true", " YES ", "on", "1", 1, "t", "y"])
def test_yes(value):
    assert flag(value) is True and flag_or_none(value) is True


@pytest.mark.parametrize("value", [False, "False", "no", "OFF", "0", 0, "f", "n"])
def test_no(value):
    assert flag(value, default=True) is False and flag_or_none(value) is False


@pytest.mark.parametrize("value", [None, "", "NULL", "None", "maybe", "2", float("nan")])
def test_not_a_yes_or_no_takes_the_default(value):
    assert flag(value) is False and flag(value, default=True) is True and flag_or_none(value) is None


@pytest.mark.parametrize(("value", "expected"), [
    (42, 42), ("42", 42), (" -3 ", -3), ("+7", 7), ("7.0", 7), (7.0, 7), ("12345678901234567890", 12345678901234567890),
    (True, None), (None, None), ("", None), ("NULL", None), ("3.5", None), (3.5, None), ("1e3", None), ("abc", None),
])
def test_whole_numbers(value, expected):
    assert whole_number(value) == expected


def test_measured_numbers_are_json_numbers_only():
    assert measured(3) == 3 and measured(2.5) == 2.5
    assert measured(True) is None and measured("3") is None and measured(None) is None
