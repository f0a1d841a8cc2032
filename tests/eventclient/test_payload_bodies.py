"""The payload's two request bodies, checked by hand (services/eventclient/payload.py): what a lax validator
takes (numbers as JSON numbers or as text), and one clear line for what it does not."""

from __future__ import annotations

from typing import Any

import pytest

from services.eventclient.payload import MAX_RANGES_PER_CALL, DoneBody, FailedBody, Invalid, parse_json


def test_numbers_as_json_or_as_text():
    body = DoneBody.parse({"output": "a.dat", "n_events": "10", "cpu_s": 1, "wall_s": "2.5", "next": 3.0,
                           "unknown": "ignored"})
    assert body == DoneBody(output="a.dat", cpu_s=1.0, wall_s=2.5, n_events=10, next=3)
    assert DoneBody.parse({"output": "a.dat"}) == DoneBody(output="a.dat")
    assert FailedBody.parse({"error_code": "1305", "diag": "bad input"}) == FailedBody(1305, "bad input")
    assert FailedBody.parse({}) == FailedBody()


@pytest.mark.parametrize(("data", "problem"), [
    ({}, "output: a file name (text) is required"),
    ({"output": 7}, "output: a file name (text) is required"),
    ({"output": "a", "next": -1}, f"next: must be from 0 to {MAX_RANGES_PER_CALL}, not -1"),
    ({"output": "a", "next": MAX_RANGES_PER_CALL + 1}, "next: must be from 0 to"),
    ({"output": "a", "n_events": "fast"}, "n_events: must be an integer, not 'fast'"),
    ({"output": "a", "n_events": 1.5}, "n_events: must be an integer, not '1.5'"),
    ({"output": "a", "n_events": True}, "n_events: must be an integer"),
    ({"output": "a", "cpu_s": "nan"}, "cpu_s: must be a finite number"),
    ({"output": "a", "cpu_s": [1]}, "cpu_s: must be a number"),
    (["output"], "body: a JSON object is required"),
])
def test_one_line_for_what_is_wrong(data: Any, problem: str):
    with pytest.raises(Invalid) as refused:
        DoneBody.parse(data)
    assert str(refused.value).startswith(problem)
    assert refused.value.detail()[0]["loc"] == ["body", str(refused.value).split(":")[0]]


def test_failed_body_and_json():
    with pytest.raises(Invalid, match="diag: must be text"):
        FailedBody.parse({"diag": 3})
    with pytest.raises(Invalid, match="body: not valid JSON"):
        parse_json(b"{not json")
