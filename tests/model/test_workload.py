"""Trace loading, token counting, tool labels and Poisson arrivals."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import pytest

from lamps.model.tools import TOOL_STATS, ToolKind, nearest_kind
from lamps.model.workload import (
    BUNDLED_TRACES,
    TraceError,
    count_tokens,
    load_trace,
    parse_trace,
    poisson_arrivals,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", BUNDLED_TRACES)
def test_bundled_traces_load_by_name(name: str) -> None:
    trace = load_trace(name)
    assert trace.name == name
    assert len(trace.requests) == 397
    assert all(request.segments[-1].call is None for request in trace.requests)


def test_numeric_context_grows_by_output_and_tool_return_as_the_trace_records() -> None:
    raw = json.loads((REPO / "services/common/lamps/model/traces/infercept_mixed.json").read_text())
    trace = load_trace("infercept_mixed")
    checked = 0
    for request in trace.requests:
        segments = raw[request.request_id]
        if "prompt_tokens" not in segments[0]:
            continue
        for index, segment in enumerate(segments):
            assert request.context_before(index) == segment["prompt_tokens"]
            checked += 1
    assert checked > 500


def test_single_api_trace_has_exactly_one_call_per_request() -> None:
    trace = load_trace("lamps_single_api")
    assert {len(request.calls) for request in trace.requests} == {1}


def test_text_is_counted_as_words_and_punctuation() -> None:
    assert count_tokens("Convert this to text to speech.") == 7
    assert count_tokens("") == 0
    assert count_tokens("MOV AX, [BX+SI]") == 8


def test_text_segments_are_labelled_by_the_tool_their_prompt_names() -> None:
    data = {
        "a": [
            {
                "prompt": "Say hello. Convert this to text to speech.",
                "completion": "hello there",
                "api_token": "audio",
                "api_time": 15.0,
            },
            {"prompt": "...", "completion": "done"},
        ],
        "b": [
            {
                "prompt": "A cat.",
                "completion": "x",
                "api_token": "Here is a generated image.",
                "api_time": 21.0,
            },
            {"prompt": "...", "completion": "y", "api_token": "z", "api_time": 3.0},
            {"prompt": "...", "completion": "end"},
        ],
    }
    trace = parse_trace("t", data)
    first, second = trace.requests
    assert first.prompt_tokens == count_tokens("Say hello. Convert this to text to speech.")
    assert first.calls[0].kind is ToolKind.TEXT_TO_SPEECH
    assert first.calls[0].return_tokens == 1
    assert second.calls[0].kind is ToolKind.IMAGE_GENERATION
    assert second.calls[1].kind is ToolKind.CHATBOT  # a text reply after seconds: a human
    assert second.context_before(1) == second.prompt_tokens + 1 + count_tokens(
        "Here is a generated image."
    )


def test_numeric_calls_are_labelled_by_nearest_mean_duration() -> None:
    assert nearest_kind(8e-5) is ToolKind.MATH
    assert nearest_kind(0.0) is ToolKind.MATH
    assert nearest_kind(0.1) is ToolKind.VIRTUAL_ENVIRONMENT
    assert nearest_kind(0.7) is ToolKind.QA
    assert nearest_kind(40.0) is ToolKind.CHATBOT


def test_tool_statistics_log_normal_keeps_mean_and_deviation() -> None:
    import math

    for stats in TOOL_STATS.values():
        mu, sigma = stats.lognormal_parameters()
        mean = math.exp(mu + sigma**2 / 2)
        std = math.sqrt((math.exp(sigma**2) - 1) * math.exp(2 * mu + sigma**2))
        assert mean == pytest.approx(stats.duration_mean_s)
        assert std == pytest.approx(stats.duration_std_s)


def test_poisson_arrivals_are_seeded_and_at_the_requested_rate() -> None:
    trace = load_trace("lamps_single_api")
    arrivals = poisson_arrivals(trace, rate=5.0, duration_s=2000.0, seed=3)
    assert arrivals == poisson_arrivals(trace, rate=5.0, duration_s=2000.0, seed=3)
    assert arrivals != poisson_arrivals(trace, rate=5.0, duration_s=2000.0, seed=4)
    # 10,000 expected; a Poisson count's standard deviation is 100.
    assert abs(len(arrivals) - 10_000) < 400
    gaps = [b.time_s - a.time_s for a, b in itertools.pairwise(arrivals)]
    assert statistics.fmean(gaps) == pytest.approx(0.2, rel=0.05)
    assert len({arrival.request_id for arrival in arrivals}) == len(arrivals)


def test_unknown_trace_and_malformed_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="lamps_single_api"):
        load_trace("no-such-trace")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(TraceError, match="not valid JSON"):
        load_trace(bad_json)
    missing_field = tmp_path / "missing.json"
    missing_field.write_text(json.dumps({"r1": [{"prompt_tokens": 10}]}))
    with pytest.raises(TraceError, match="request 'r1'"):
        load_trace(missing_field)
    negative = tmp_path / "negative.json"
    negative.write_text(
        json.dumps(
            {
                "r1": [
                    {
                        "prompt_tokens": 1,
                        "completion_tokens": 2,
                        "api_time": -1,
                        "api_token_length": 1,
                    },
                    {"prompt_tokens": 4, "completion_tokens": 2},
                ]
            }
        )
    )
    with pytest.raises(TraceError, match="api_time"):
        load_trace(negative)
