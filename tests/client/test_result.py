"""`Result.from_events`: what a finished generation's event log folds into."""

from __future__ import annotations

from lamps.client import (
    Event,
    Finished,
    FinishReason,
    RequestState,
    Result,
    StateChanged,
    Strategy,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
)
from lamps.client.types import Timings, ToolCall, ToolResult, Usage


def test_a_call_keeps_the_strategy_the_scheduler_switched_it_to() -> None:
    call = ToolCall("c1", "emulated.qa", "{}")
    events: list[Event] = [
        Tokens("r", 0, 0.0, (1, 2), "a b", 0),
        ToolCallStarted("r", 1, 0.1, call, Strategy.PRESERVE),
        StateChanged("r", 2, 0.1, RequestState.IN_TOOL, "w", Strategy.PRESERVE),
        StateChanged("r", 3, 0.2, RequestState.IN_TOOL, "w", Strategy.SWAP),
        ToolCallFinished("r", 4, 0.5, ToolResult("c1", "ok", 0.4, None)),
        StateChanged("r", 5, 0.5, RequestState.RUNNING, "w", Strategy.SWAP),
        Tokens("r", 6, 0.6, (3,), " c", 2),
        Finished("r", 7, 0.7, RequestState.FINISHED, FinishReason.STOP, Usage(), Timings(), ""),
    ]
    result = Result.from_events(events)
    assert result.text == "a b c"
    assert result.token_ids == (1, 2, 3)
    (record,) = result.tool_calls
    assert record.strategy is Strategy.SWAP
    assert record.result is not None
    assert record.result.output == "ok"
