"""A request as the scheduler tracks it (`Job`), its record in the store, and its event log."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lamps.model.strategy import Strategy
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

QUEUED = cpb.REQUEST_STATE_QUEUED
RUNNING = cpb.REQUEST_STATE_RUNNING
IN_TOOL = cpb.REQUEST_STATE_IN_TOOL
FINISHED = cpb.REQUEST_STATE_FINISHED
FAILED = cpb.REQUEST_STATE_FAILED
CANCELLED = cpb.REQUEST_STATE_CANCELLED
ENDED = frozenset({FINISHED, FAILED, CANCELLED})

STRATEGY_TO_PB = {
    Strategy.PRESERVE: cpb.STRATEGY_PRESERVE,
    Strategy.DISCARD: cpb.STRATEGY_DISCARD,
    Strategy.SWAP: cpb.STRATEGY_SWAP,
}
STRATEGY_FROM_PB = {value: key for key, value in STRATEGY_TO_PB.items()}

# Characters per token when only a prompt's text is known (English averages about four).
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class ToolCallState:
    """The tool call a request is paused in."""

    call_id: str
    name: str
    arguments_json: str
    started_at: float
    # Tokens the request generated in its segment before the call (reported to the predictor).
    pre_call_tokens: int

    def to_pb(self) -> cpb.ToolCall:
        return cpb.ToolCall(
            call_id=self.call_id, name=self.name, arguments_json=self.arguments_json
        )


@dataclass(slots=True)
class Outcome:
    """What one call of a request turned out to be, for the predictor."""

    tool: str
    duration_s: float
    pre_call_tokens: int
    post_call_tokens: int = 0


@dataclass(eq=False, slots=True)
class Job:
    """Everything the scheduler knows about one request; persisted as its record."""

    request_id: str
    request: pb.GenerateRequest
    created_at: float
    max_tokens: int
    prompt_tokens: int
    state: int = QUEUED
    worker_id: str = ""
    prediction: cpb.Prediction = field(default_factory=cpb.Prediction)
    strategy: Strategy = Strategy.PRESERVE
    rank: float = 0.0
    passed_over: int = 0
    # Replay: the segment being generated, and its tokens so far.
    segment: int = 0
    segment_tokens: int = 0
    completion_tokens: int = 0
    tool_output_tokens: int = 0
    recomputed_tokens: int = 0
    tool_calls: int = 0
    # The exact context a worker last handed back (prompt and everything appended), and token ids
    # generated since; together they let any worker continue the request.
    context_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # Text generated and tool output appended since the last hand-back, in order (to continue a
    # text prompt), and the tool output alone, as text or (replay) a count.
    text: str = ""
    appended_text: str = ""
    appended_tokens: int = 0
    # A tool's answer not yet given to a worker (after Discard, or a lost worker).
    pending_text: str = ""
    pending_tokens: int = 0
    # True from a Resume until the worker shows progress, so a reconnecting worker gets it again.
    resume_sent: bool = False
    call: ToolCallState | None = None
    # The last call answered, so an Intercepted a worker re-sends after a reconnect is not run
    # twice.
    last_call_id: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    enqueued_at: float | None = None
    admitted_at: float = 0.0
    queue_s: float = 0.0
    ttft_s: float = 0.0
    tool_s: float = 0.0
    recompute_s: float = 0.0
    finished_at: float = 0.0
    finish_reason: int = cpb.FINISH_REASON_UNSPECIFIED
    error_message: str = ""
    idempotency_key: str = ""
    # Digest of the request body, to tell a retry from a different request under the same key.
    digest: str = ""
    # Who submitted it ("" for the shared tenant): only that tenant may read or cancel it.
    tenant: str = ""
    # The event log: `events` are those this process holds, from offset `events_base`; the
    # first `published` offsets are durable and may be shown to clients.
    events: list[cpb.RequestEvent] = field(default_factory=list)
    events_base: int = 0
    next_offset: int = 0
    published: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def context_tokens(self) -> int:
        """Tokens of context the request holds now (prompt, generated and appended)."""
        return self.prompt_tokens + self.completion_tokens + self.tool_output_tokens

    def replay_segments(self) -> list[cpb.ReplaySegment]:
        """The rest of the replay script, the current segment shortened by what it produced."""
        segments = list(self.request.replay.segments[self.segment :])
        if not segments:
            return []
        first = cpb.ReplaySegment()
        first.CopyFrom(segments[0])
        first.output_tokens = max(first.output_tokens - self.segment_tokens, 0)
        return [first, *segments[1:]]

    def add_event(self, now: float, **kind: Any) -> cpb.RequestEvent:
        event = cpb.RequestEvent(
            offset=self.next_offset, request_id=self.request_id, time=timestamp(now), **kind
        )
        self.events.append(event)
        self.next_offset += 1
        return event

    def usage(self) -> cpb.Usage:
        return cpb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tool_output_tokens=self.tool_output_tokens,
            recomputed_tokens=self.recomputed_tokens,
            tool_calls=self.tool_calls,
        )

    def timings(self, now: float) -> cpb.Timings:
        queue_s = self.queue_s
        if self.state == QUEUED and self.enqueued_at is not None:
            queue_s += max(now - self.enqueued_at, 0.0)
        end = self.finished_at if self.ended else now
        return cpb.Timings(
            queue_seconds=queue_s,
            ttft_seconds=self.ttft_s,
            tool_seconds=self.tool_s,
            recompute_seconds=self.recompute_s,
            total_seconds=max(end - self.created_at, 0.0),
        )

    def to_record(self, now: float) -> pb.RequestRecord:
        record = pb.RequestRecord(
            request_id=self.request_id,
            state=self.state,  # type: ignore[arg-type]
            worker_id=self.worker_id,
            created_at=timestamp(self.created_at),
            prediction=self.prediction,
            strategy=STRATEGY_TO_PB[self.strategy],
            rank=self.rank,
            passed_over=self.passed_over,
            usage=self.usage(),
            timings=self.timings(now),
            finish_reason=self.finish_reason,  # type: ignore[arg-type]
            error_message=self.error_message,
            next_offset=self.published,
            labels=dict(self.request.labels),
        )
        if self.ended:
            record.finished_at.CopyFrom(timestamp(self.finished_at))
        return record

    # Persistence -------------------------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """The mutable part of the record, as JSON (the request itself is stored once)."""
        call = None
        if self.call is not None:
            call = [
                self.call.call_id,
                self.call.name,
                self.call.arguments_json,
                self.call.started_at,
                self.call.pre_call_tokens,
            ]
        state = {
            "state": self.state,
            "worker_id": self.worker_id,
            "created_at": self.created_at,
            "max_tokens": self.max_tokens,
            "prompt_tokens": self.prompt_tokens,
            "prediction": self.prediction.SerializeToString().hex(),
            "strategy": self.strategy.value,
            "rank": self.rank if math.isfinite(self.rank) else 0.0,
            "passed_over": self.passed_over,
            "segment": self.segment,
            "segment_tokens": self.segment_tokens,
            "completion_tokens": self.completion_tokens,
            "tool_output_tokens": self.tool_output_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "tool_calls": self.tool_calls,
            "context_token_ids": self.context_token_ids,
            "token_ids": self.token_ids,
            "text": self.text,
            "appended_text": self.appended_text,
            "appended_tokens": self.appended_tokens,
            "pending_text": self.pending_text,
            "pending_tokens": self.pending_tokens,
            "resume_sent": self.resume_sent,
            "call": call,
            "last_call_id": self.last_call_id,
            "outcomes": [
                [o.tool, o.duration_s, o.pre_call_tokens, o.post_call_tokens] for o in self.outcomes
            ],
            "enqueued_at": self.enqueued_at,
            "queue_s": self.queue_s,
            "ttft_s": self.ttft_s,
            "tool_s": self.tool_s,
            "recompute_s": self.recompute_s,
            "finished_at": self.finished_at,
            "finish_reason": self.finish_reason,
            "error_message": self.error_message,
            "idempotency_key": self.idempotency_key,
            "digest": self.digest,
            "tenant": self.tenant,
            "next_offset": self.next_offset,
        }
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def from_record(cls, request_id: str, fields: dict[str, bytes]) -> Job:
        """Rebuild a job from its stored record; its committed log is `next_offset` long."""
        request = pb.GenerateRequest.FromString(fields["request"])
        state = json.loads(fields["state"])
        call = state.pop("call")
        outcomes = state.pop("outcomes")
        prediction = cpb.Prediction.FromString(bytes.fromhex(state.pop("prediction")))
        strategy = Strategy(state.pop("strategy"))
        job = cls(
            request_id=request_id,
            request=request,
            prediction=prediction,
            strategy=strategy,
            **state,
        )
        if call is not None:
            job.call = ToolCallState(*call)
        job.outcomes = [Outcome(*item) for item in outcomes]
        job.events_base = job.next_offset
        job.published = job.next_offset
        return job


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def prompt_token_count(request: pb.GenerateRequest) -> int:
    """Tokens in the prompt: exact for token ids, estimated from the text otherwise."""
    if request.prompt_token_ids:
        return len(request.prompt_token_ids)
    return max(math.ceil(len(request.prompt) / CHARS_PER_TOKEN), 1)
