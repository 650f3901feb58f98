"""The SDK's values: frozen dataclasses and string enums, built from the protos here and only here.

Times are float seconds since the epoch; durations are float seconds (fields ending in `_s`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf.timestamp_pb2 import Timestamp

from lamps.client.enums import (
    FinishReason,
    RequestState,
    Strategy,
    ToolErrorCode,
    WorkerState,
    enum_from_proto,
    reason_from_proto,
    state_from_proto,
    strategy_from_proto,
)
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb


def _time(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


@dataclass(frozen=True)
class ReplaySegment:
    """One segment of a replayed trace: exact output tokens, then an optional tool call."""

    output_tokens: int
    tool: str = ""
    tool_duration_s: float = 0.0
    tool_output_tokens: int = 0

    def to_proto(self) -> cpb.ReplaySegment:
        return cpb.ReplaySegment(
            output_tokens=self.output_tokens,
            tool=self.tool,
            tool_duration_seconds=self.tool_duration_s,
            tool_output_tokens=self.tool_output_tokens,
        )


@dataclass(frozen=True)
class Prediction:
    """What the predictor expected of a request before it ran."""

    pre_call_tokens: int
    pre_call_bin: int
    tool: str
    tool_probability: float
    call_duration_s: float
    post_call_tokens: int
    from_model: bool

    @classmethod
    def from_proto(cls, p: cpb.Prediction) -> Prediction:
        return cls(
            pre_call_tokens=p.pre_call_tokens,
            pre_call_bin=p.pre_call_bin,
            tool=p.tool,
            tool_probability=p.tool_probability,
            call_duration_s=p.call_duration_seconds,
            post_call_tokens=p.post_call_tokens,
            from_model=p.from_model,
        )


@dataclass(frozen=True)
class Usage:
    """Tokens counted over a request's life."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_output_tokens: int = 0
    recomputed_tokens: int = 0
    tool_calls: int = 0

    @classmethod
    def from_proto(cls, u: cpb.Usage) -> Usage:
        return cls(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            tool_output_tokens=u.tool_output_tokens,
            recomputed_tokens=u.recomputed_tokens,
            tool_calls=u.tool_calls,
        )


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in seconds."""

    queue_s: float = 0.0
    ttft_s: float = 0.0
    tool_s: float = 0.0
    recompute_s: float = 0.0
    swap_s: float = 0.0
    total_s: float = 0.0

    @classmethod
    def from_proto(cls, t: cpb.Timings) -> Timings:
        return cls(
            queue_s=t.queue_seconds,
            ttft_s=t.ttft_seconds,
            tool_s=t.tool_seconds,
            recompute_s=t.recompute_seconds,
            swap_s=t.swap_seconds,
            total_s=t.total_seconds,
        )


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model made it."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class ToolError:
    """A tool's failure, readable by the model."""

    code: ToolErrorCode
    message: str


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returned; `error` is None when it succeeded."""

    call_id: str
    output: str
    duration_s: float
    error: ToolError | None

    @classmethod
    def from_proto(cls, r: cpb.ToolResult) -> ToolResult:
        error = None
        if r.HasField("error") and r.error.code != cpb.TOOL_ERROR_CODE_UNSPECIFIED:
            code = enum_from_proto(
                ToolErrorCode, cpb.ToolErrorCode, r.error.code, "TOOL_ERROR_CODE_"
            )
            error = ToolError(code=code, message=r.error.message)
        return cls(call_id=r.call_id, output=r.output, duration_s=r.duration_seconds, error=error)


# Events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The first event of every request (offset 0): its id, prediction and planned strategy."""

    KIND: ClassVar[str] = "accepted"
    request_id: str
    offset: int
    time: float
    prediction: Prediction | None
    strategy: Strategy


@dataclass(frozen=True)
class StateChanged:
    """The request moved to another lifecycle state."""

    KIND: ClassVar[str] = "state_changed"
    request_id: str
    offset: int
    time: float
    state: RequestState
    worker_id: str
    strategy: Strategy


@dataclass(frozen=True)
class Tokens:
    """New generated tokens; `start_index` is the position of the first among all generated."""

    KIND: ClassVar[str] = "tokens"
    request_id: str
    offset: int
    time: float
    token_ids: tuple[int, ...]
    text: str
    start_index: int


@dataclass(frozen=True)
class ToolCallStarted:
    """The model called a tool; generation pauses under `strategy`."""

    KIND: ClassVar[str] = "tool_call_started"
    request_id: str
    offset: int
    time: float
    call: ToolCall
    strategy: Strategy


@dataclass(frozen=True)
class ToolCallFinished:
    """The tool answered; generation resumes with its output appended."""

    KIND: ClassVar[str] = "tool_call_finished"
    request_id: str
    offset: int
    time: float
    result: ToolResult


@dataclass(frozen=True)
class Finished:
    """The request ended; always its last event."""

    KIND: ClassVar[str] = "finished"
    request_id: str
    offset: int
    time: float
    state: RequestState
    reason: FinishReason
    usage: Usage
    timings: Timings
    error_message: str


Event = Accepted | StateChanged | Tokens | ToolCallStarted | ToolCallFinished | Finished


def event_from_proto(e: cpb.RequestEvent) -> Event | None:
    """The typed event for a RequestEvent; None for a kind newer than this SDK, which a
    client skips rather than failing a whole generation over."""
    head: dict[str, Any] = {"request_id": e.request_id, "offset": e.offset, "time": _time(e.time)}
    kind = e.WhichOneof("kind")
    if kind == "accepted":
        a = e.accepted
        prediction = Prediction.from_proto(a.prediction) if a.HasField("prediction") else None
        return Accepted(**head, prediction=prediction, strategy=strategy_from_proto(a.strategy))
    if kind == "state_changed":
        s = e.state_changed
        return StateChanged(
            **head,
            state=state_from_proto(s.state),
            worker_id=s.worker_id,
            strategy=strategy_from_proto(s.strategy),
        )
    if kind == "tokens":
        t = e.tokens
        return Tokens(**head, token_ids=tuple(t.token_ids), text=t.text, start_index=t.start_index)
    if kind == "tool_call_started":
        c = e.tool_call_started
        call = ToolCall(
            call_id=c.call.call_id, name=c.call.name, arguments_json=c.call.arguments_json
        )
        return ToolCallStarted(**head, call=call, strategy=strategy_from_proto(c.strategy))
    if kind == "tool_call_finished":
        return ToolCallFinished(**head, result=ToolResult.from_proto(e.tool_call_finished.result))
    if kind == "finished":
        f = e.finished
        return Finished(
            **head,
            state=state_from_proto(f.state),
            reason=reason_from_proto(f.reason),
            usage=Usage.from_proto(f.usage),
            timings=Timings.from_proto(f.timings),
            error_message=f.error_message,
        )
    return None


# Records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """Everything the scheduler keeps about a request."""

    request_id: str
    state: RequestState
    worker_id: str
    created_at: float
    finished_at: float | None
    prediction: Prediction | None
    strategy: Strategy
    rank: float
    passed_over: int
    usage: Usage
    timings: Timings
    finish_reason: FinishReason
    error_message: str
    next_offset: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, r: pb.RequestRecord) -> RequestRecord:
        return cls(
            request_id=r.request_id,
            state=state_from_proto(r.state),
            worker_id=r.worker_id,
            created_at=_time(r.created_at),
            finished_at=_time(r.finished_at) if r.HasField("finished_at") else None,
            prediction=Prediction.from_proto(r.prediction) if r.HasField("prediction") else None,
            strategy=strategy_from_proto(r.strategy),
            rank=r.rank,
            passed_over=r.passed_over,
            usage=Usage.from_proto(r.usage),
            timings=Timings.from_proto(r.timings),
            finish_reason=reason_from_proto(r.finish_reason),
            error_message=r.error_message,
            next_offset=r.next_offset,
            labels=dict(r.labels),
        )


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the scheduler sees it; KV in blocks of `kv_block_size` tokens."""

    worker_id: str
    model: str
    engine: str
    state: WorkerState
    kv_block_size: int
    kv_used_blocks: int
    kv_total_blocks: int
    cpu_used_blocks: int
    cpu_total_blocks: int
    running: int
    in_tool: int
    last_report_at: float | None
    strategies: tuple[Strategy, ...]

    @property
    def kv_used_fraction(self) -> float:
        """GPU KV blocks in use, from 0 to 1 (0 for a worker that reported no capacity)."""
        return self.kv_used_blocks / self.kv_total_blocks if self.kv_total_blocks else 0.0

    @classmethod
    def from_proto(cls, w: pb.WorkerStatus) -> WorkerStatus:
        kv = w.kv
        return cls(
            worker_id=w.worker_id,
            model=w.model,
            engine=w.engine,
            state=enum_from_proto(WorkerState, pb.WorkerState, w.state, "WORKER_STATE_"),
            kv_block_size=kv.block_size,
            kv_used_blocks=kv.total_blocks - kv.free_blocks,
            kv_total_blocks=kv.total_blocks,
            cpu_used_blocks=kv.cpu_total_blocks - kv.cpu_free_blocks,
            cpu_total_blocks=kv.cpu_total_blocks,
            running=w.running,
            in_tool=w.in_tool,
            last_report_at=_time(w.last_report_at) if w.HasField("last_report_at") else None,
            strategies=tuple(strategy_from_proto(s) for s in w.strategies),
        )


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster as the leading scheduler sees it."""

    policy: str
    leader_id: str
    queued: int
    starved: int
    running: int
    in_tool: int
    workers: tuple[WorkerStatus, ...]
    # Engine seconds per wall second: above 1 when sim workers replay a benchmark sped up.
    time_scale: float = 1.0

    @classmethod
    def from_proto(cls, s: pb.ClusterStatusResponse) -> ClusterStatus:
        return cls(
            policy=s.policy,
            leader_id=s.leader_id,
            queued=s.queued,
            starved=s.starved,
            running=s.running,
            in_tool=s.in_tool,
            workers=tuple(WorkerStatus.from_proto(w) for w in s.workers),
            time_scale=s.time_scale or 1.0,
        )


@dataclass(frozen=True)
class Submitted:
    """A submitted request's id; `created` is False when its idempotency key was seen before."""

    request_id: str
    created: bool
