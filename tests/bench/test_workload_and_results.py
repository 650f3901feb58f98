"""What `lamps bench` sends for a trace's request, and how it turns what the client saw into the
simulator's result shape."""

from __future__ import annotations

import pytest

from lamps.bench.results import latencies, summarize_live
from lamps.bench.runner import Outcome
from lamps.bench.workload import prompt_token_ids, replay_segments, request_arguments
from lamps.client import ReplaySegment, RequestState
from lamps.model.tools import ToolKind
from lamps.model.workload import Arrival, RequestSpec, SegmentSpec, ToolCallSpec

SPEC = RequestSpec(
    request_id="r",
    prompt_tokens=7,
    segments=(
        SegmentSpec(12, ToolCallSpec(ToolKind.QA, 1.5, 9)),
        SegmentSpec(30, None),
    ),
)


def test_a_request_replays_its_prompt_length_segments_and_emulated_calls() -> None:
    arguments = request_arguments(Arrival(time_s=0.5, request_id="r-0", spec=SPEC))
    assert len(arguments["prompt_token_ids"]) == 7
    assert arguments["replay"] == [
        ReplaySegment(12, "emulated.qa", 1.5, 9),
        ReplaySegment(30, "", 0.0, 0),
    ]
    assert arguments["labels"] == {"lamps.bench/request": "r-0"}
    assert replay_segments(SPEC)[0].tool == "emulated.qa"
    assert prompt_token_ids(3) == prompt_token_ids(3)


def outcome(sent: float, ended: float, first: float | None, state: RequestState | None) -> Outcome:
    return Outcome(
        arrival=Arrival(time_s=sent, request_id="r", spec=SPEC),
        sent_s=sent,
        ended_s=ended,
        first_token_s=first,
        request_id="id",
        state=state,
        error="" if state is RequestState.FINISHED else "it failed",
    )


def test_live_results_are_in_engine_seconds_and_count_failures() -> None:
    outcomes = [
        outcome(0.0, 1.0, 0.1, RequestState.FINISHED),
        outcome(0.5, 2.5, 0.6, RequestState.FINISHED),
        outcome(1.0, 3.0, None, RequestState.FAILED),
    ]
    # The system ran 10x faster than the engines' time: 1 wall second is 10 engine seconds.
    assert latencies(outcomes, 10.0) == [10.0, 20.0]
    result = summarize_live("lamps", 4.0, outcomes, 10.0, wall_s=3.0)
    assert result.source == "live"
    assert (result.requests, result.finished, result.failed) == (3, 2, 1)
    assert result.mean_latency_s == pytest.approx(15.0)
    assert result.mean_ttft_s == pytest.approx(1.0)
    # Serving latency takes the script's 1.5 s of tool time out.
    assert result.mean_serving_latency_s == pytest.approx(13.5)
    assert result.makespan_s == pytest.approx(30.0)
    assert result.throughput_rps == pytest.approx(2 / 30.0)
    assert result.idle_held_gb is None
    assert result.preemptions is None
    assert result.to_json()["source"] == "live"
