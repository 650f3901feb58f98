"""Hermes-style tool calls: finding the markers, the call's span and its JSON."""

from __future__ import annotations

import pytest

from lamps.worker.engines.tool_calls import Markers, ToolCall, call_span, find_markers, parse_call

MARKERS = Markers(open_id=3, close_id=4)


def test_markers_are_found_only_when_both_are_single_tokens() -> None:
    assert find_markers({"<tool_call>": 3, "</tool_call>": 4, "a": 5}) == MARKERS
    assert find_markers({"<tool_call>": 3}) is None
    assert find_markers({"<tool": 3, "_call>": 4}) is None


def test_the_span_is_the_body_of_the_last_call() -> None:
    assert call_span([9, 3, 10, 11, 4], MARKERS) == (2, 4)
    assert call_span([3, 10, 4, 7, 3, 12, 4], MARKERS) == (5, 6)
    assert call_span([3, 4], MARKERS) == (1, 1)


@pytest.mark.parametrize("ids", [[], [9, 10], [9, 3, 10], [9, 10, 4]])
def test_no_span_without_a_closed_call(ids: list[int]) -> None:
    assert call_span(ids, MARKERS) is None


def test_a_call_is_a_name_and_an_argument_object() -> None:
    call = parse_call(' {"name": "calc", "arguments": {"expression": "2 + 2"}} ')
    assert call == ToolCall("calc", '{"expression":"2 + 2"}')
    assert parse_call('{"name": "now"}') == ToolCall("now", "{}")


@pytest.mark.parametrize(
    "body",
    [
        "",
        "calc(2)",
        "[1, 2]",
        '{"arguments": {}}',
        '{"name": "", "arguments": {}}',
        '{"name": 7, "arguments": {}}',
        '{"name": "calc", "arguments": "2 + 2"}',
        '{"name": "calc", "arguments": {}',
    ],
)
def test_a_malformed_call_is_not_a_call(body: str) -> None:
    assert parse_call(body) is None
