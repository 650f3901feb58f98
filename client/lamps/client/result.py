"""A whole generation folded from its events: what `complete()` returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lamps.client.enums import FinishReason, RequestState, Strategy
from lamps.client.types import (
    Event,
    Finished,
    StateChanged,
    Timings,
    Tokens,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    ToolResult,
    Usage,
)


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a generation and its result (None if the request ended during it)."""

    call: ToolCall
    # The strategy the call ended under (the scheduler may change it while the call runs).
    strategy: Strategy
    result: ToolResult | None


@dataclass(frozen=True)
class Result:
    """A generation run to its end."""

    request_id: str
    state: RequestState
    text: str
    token_ids: tuple[int, ...]
    tool_calls: tuple[ToolCallRecord, ...]
    usage: Usage
    timings: Timings
    finish_reason: FinishReason
    error_message: str
    events: tuple[Event, ...]

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Result:
        """Fold a request's whole event log, from offset 0 to its Finished event."""
        log = tuple(events)
        if not log or not isinstance(log[-1], Finished):
            raise ValueError("a Result needs a request's events up to its Finished event")
        end = log[-1]
        token_ids: list[int] = []
        text: list[str] = []
        calls: dict[str, ToolCallRecord] = {}
        open_call = ""
        for event in log:
            if isinstance(event, Tokens):
                token_ids.extend(event.token_ids)
                text.append(event.text)
            elif isinstance(event, ToolCallStarted):
                calls[event.call.call_id] = ToolCallRecord(event.call, event.strategy, None)
                open_call = event.call.call_id
            elif (
                isinstance(event, StateChanged)
                and event.state is RequestState.IN_TOOL
                and open_call in calls
            ):
                # The scheduler moved the paused request to another strategy mid-call.
                kept = calls[open_call]
                calls[open_call] = ToolCallRecord(kept.call, event.strategy, kept.result)
            elif isinstance(event, ToolCallFinished) and event.result.call_id in calls:
                started = calls[event.result.call_id]
                calls[event.result.call_id] = ToolCallRecord(
                    started.call, started.strategy, event.result
                )
        return cls(
            request_id=end.request_id,
            state=end.state,
            text="".join(text),
            token_ids=tuple(token_ids),
            tool_calls=tuple(calls.values()),
            usage=end.usage,
            timings=end.timings,
            finish_reason=end.reason,
            error_message=end.error_message,
            events=log,
        )
