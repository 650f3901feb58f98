"""What a policy knows about a request: predicted (or, for an oracle, true) lengths and calls."""

from __future__ import annotations

from dataclasses import dataclass

from lamps.model.tools import ToolKind


@dataclass(frozen=True, slots=True)
class CallEstimate:
    """The next tool call of a request."""

    kind: ToolKind | None
    duration_s: float
    return_tokens: int


@dataclass(frozen=True, slots=True)
class RequestEstimate:
    """A request as it enters the queue: the context it must (re)compute, what it will generate
    before its next call, the call, and what it generates after the call."""

    context_tokens: int
    pre_call_tokens: int
    call: CallEstimate | None
    post_call_tokens: int = 0

    @property
    def context_at_call(self) -> int:
        return self.context_tokens + self.pre_call_tokens


@dataclass(frozen=True, slots=True)
class RequestView:
    """A queued request as a policy ranks it. `truth` is set only where the truth is known
    (simulations); only oracle policies may read it."""

    arrival_s: float
    enqueued_s: float
    estimate: RequestEstimate
    truth: RequestEstimate | None = None


@dataclass(frozen=True, slots=True)
class CallView:
    """A request paused at a tool call: its true context, the predicted duration, and how long the
    call has run so far (0 at the intercept)."""

    context_tokens: int
    kind: ToolKind | None
    predicted_duration_s: float
    elapsed_s: float = 0.0
    true_duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class EngineView:
    """What a policy may know of the replica a request runs on."""

    running_tokens: int
    decode_tokens: int
    iteration_s: float
    cpu_free_tokens: int
