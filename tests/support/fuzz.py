"""Hostile-input fuzzing of every RPC of running servers, over raw bytes.

The RPCs are found from the services' descriptors, so a new RPC is fuzzed without a change here.
Inputs are built at the wire level (tests/support/fuzz_wire.py), half of them leaning valid
(tests/support/fuzz_hints.py) so they get past validation, and sent with identity serializers.

Two entry points: `fuzz_inputs(...)` is a hypothesis strategy for the tests, and
`run_fuzz(targets, count_per_rpc, seed)` a seeded sweep for the reliability benchmark, which
also cancels what it got accepted and counts what was leaked.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from lamps.v1 import common_pb2 as cpb
from lamps.v1 import predictor_pb2, scheduler_pb2, tool_runner_pb2
from lamps.v1 import scheduler_pb2 as pb
from tests.support.fuzz_hints import hints_for
from tests.support.fuzz_wire import (
    Chooser,
    RandomChooser,
    Shape,
    chance,
    length_delimited,
    message,
    message_type,
)

CLIENT_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
UNARY_TIMEOUT_S = 15.0
FIRST_EVENT_TIMEOUT_S = 15.0
WATCH_IDLE_TIMEOUT_S = 1.0
# The servers' receive limit (lamps.common.channel).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_FAULTS = frozenset({"UNKNOWN", "INTERNAL", "DATA_LOSS"})
# Every RPC may refuse what it cannot decode or validate (INVALID_ARGUMENT) and what is larger
# than the server's receive limit (RESOURCE_EXHAUSTED, which is also the admission limit's code).
_COMMON = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"})
ALLOWED_CODES: dict[str, frozenset[str]] = {
    # A repeated idempotency key with another body.
    "lamps.v1.SchedulerService.Submit": _COMMON | {"ALREADY_EXISTS"},
    # An unknown id; an offset past the log; a watch with nothing new until our deadline.
    "lamps.v1.SchedulerService.Watch": _COMMON | {"NOT_FOUND", "OUT_OF_RANGE", "DEADLINE_EXCEEDED"},
    "lamps.v1.SchedulerService.Cancel": _COMMON | {"NOT_FOUND"},
    "lamps.v1.SchedulerService.GetRequest": _COMMON | {"NOT_FOUND"},
    # A first message that is not a Register; a worker id that is connected already.
    "lamps.v1.WorkerGatewayService.Connect": _COMMON | {"FAILED_PRECONDITION", "ALREADY_EXISTS"},
}
SCHEDULER = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"]
GATEWAY = scheduler_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"]
PREDICTOR = predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"]
TOOL_RUNNER = tool_runner_pb2.DESCRIPTOR.services_by_name["ToolRunnerService"]
LEANING_VALID = Shape(hostile=5, present=20, mutate=0, huge=0)
HOSTILE = Shape()


def allowed_codes(method: MethodDescriptor) -> frozenset[str]:
    """The status codes `method` may answer fuzzed input with; never UNKNOWN or INTERNAL."""
    return ALLOWED_CODES.get(method.full_name, _COMMON)


def is_expected(method: MethodDescriptor, fuzz_input: FuzzInput, outcome: Outcome) -> bool:
    """Whether `outcome` is a right answer to `fuzz_input`: an allowed code and, for
    RESOURCE_EXHAUSTED, a message over the servers' receive limit or an admission limit's
    refusal (with its retry hint); anything else (a status message too long for its trailer,
    say) is a bug."""
    if outcome.code not in allowed_codes(method):
        return False
    if outcome.code != "RESOURCE_EXHAUSTED":
        return True
    oversized = max(len(m) for m in fuzz_input.messages) > MAX_MESSAGE_BYTES
    return oversized or "retry" in outcome.details.lower()


@dataclass(frozen=True)
class FuzzTarget:
    """A server to fuzz: its address, the services it hosts and the bearer token they need."""

    address: str
    services: tuple[ServiceDescriptor, ...]
    token: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@dataclass(frozen=True)
class Rpc:
    """One method of a target."""

    target: FuzzTarget
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return self.method.full_name


def lamps_targets(
    scheduler: str,
    predictor: str,
    tool_runner: str,
    *,
    client_token: str | None = None,
    cluster_token: str | None = None,
    service_token: str | None = None,
) -> list[FuzzTarget]:
    """The four services of a LAMPS system, at their addresses, with the tokens they take
    (`service_token`: the predictor's and tool runner's, if they require one)."""
    return [
        FuzzTarget(scheduler, (SCHEDULER,), client_token),
        FuzzTarget(scheduler, (GATEWAY,), cluster_token),
        FuzzTarget(predictor, (PREDICTOR,), service_token),
        FuzzTarget(tool_runner, (TOOL_RUNNER,), service_token),
    ]


def rpcs(targets: Sequence[FuzzTarget]) -> list[Rpc]:
    """Every method of every target's services."""
    return [
        Rpc(target, method)
        for target in targets
        for service in target.services
        for method in service.methods
    ]


@dataclass(frozen=True)
class FuzzInput:
    """The request messages of one call (several on a client stream), as raw bytes."""

    messages: tuple[bytes, ...]

    def __repr__(self) -> str:  # hypothesis prints failing inputs: keep megabytes out
        sizes = ", ".join(f"{len(m)} B: {m[:48]!r}" for m in self.messages)
        return f"FuzzInput({sizes})"


def make_input(method: MethodDescriptor, chooser: Chooser, known: Sequence[str]) -> FuzzInput:
    """One call's input for `method`: leaning valid or hostile, by a coin."""
    shape = LEANING_VALID if chance(chooser, 50) else HOSTILE
    shape = replace(shape, hints=hints_for(method.containing_service.full_name, known))
    if not method.client_streaming:
        return FuzzInput((message(method.input_type, chooser, shape),))
    return FuzzInput(tuple(_connect_stream(method, chooser, shape)))


def _connect_stream(method: MethodDescriptor, chooser: Chooser, shape: Shape) -> Iterator[bytes]:
    """A Register (usually) and a few Reports, as a worker would open its stream."""
    fields = {fd.name: fd for fd in method.input_type.fields}
    first, then = fields.get("register"), fields.get("report")
    if first is None or then is None or chance(chooser, 15):
        yield message(method.input_type, chooser, shape)
    else:
        yield length_delimited(first.number, message(message_type(first), chooser, shape, 1))
    for _ in range(chooser.integer(0, 3) if then is not None else 0):
        assert then is not None
        yield length_delimited(then.number, message(message_type(then), chooser, shape, 1))


class _DrawChooser:
    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))


@st.composite
def _drawn_input(draw: st.DrawFn, method: MethodDescriptor, known: Sequence[str]) -> FuzzInput:
    chooser = _DrawChooser(draw)
    return make_input(method, chooser, known)


def fuzz_inputs(
    method: MethodDescriptor, known: Sequence[str] = ()
) -> st.SearchStrategy[FuzzInput]:
    """A hypothesis strategy of inputs for `method` (`known`: request ids to aim at)."""
    return _drawn_input(method, known)


# Calls -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one call got: its status code, and the requests it got accepted."""

    code: str
    accepted: list[str] = field(default_factory=list)
    details: str = ""


def _identity(value: bytes) -> bytes:
    return value


def call(channel: grpc.Channel, rpc: Rpc, fuzz_input: FuzzInput) -> Outcome:
    """Send `fuzz_input` to `rpc`; a stream is read to its first message (or its end), then
    cancelled, so a generation that runs on is left running (and is cancelled at the end)."""
    metadata = rpc.target.metadata()
    method = rpc.method
    try:
        if not method.server_streaming:
            unary = channel.unary_unary(rpc.path, _identity, _identity)
            response = unary(fuzz_input.messages[0], metadata=metadata, timeout=UNARY_TIMEOUT_S)
            return Outcome("OK", _accepted_ids(rpc, [response]))
        timeout = WATCH_IDLE_TIMEOUT_S if method.name == "Watch" else FIRST_EVENT_TIMEOUT_S
        if method.client_streaming:
            stream = channel.stream_stream(rpc.path, _identity, _identity)
            responses = stream(iter(fuzz_input.messages), metadata=metadata, timeout=timeout)
        else:
            server_stream = channel.unary_stream(rpc.path, _identity, _identity)
            responses = server_stream(fuzz_input.messages[0], metadata=metadata, timeout=timeout)
        # range first: zip stops on it before asking the stream for a second message.
        first = [response for _, response in zip(range(1), responses, strict=False)]
        responses.cancel()  # type: ignore[no-untyped-call]
        return Outcome("OK", _accepted_ids(rpc, first))
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return Outcome(code.name, details=str(error.details())[:300])


def _accepted_ids(rpc: Rpc, responses: list[bytes]) -> list[str]:
    if rpc.method.full_name == "lamps.v1.SchedulerService.Submit":
        return [pb.SubmitResponse.FromString(r).request_id for r in responses]
    if rpc.method.full_name == "lamps.v1.SchedulerService.Generate":
        return [pb.GenerateResponse.FromString(r).event.request_id for r in responses]
    return []


def open_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)


def is_serving(channel: grpc.Channel, service: str) -> bool:
    """Whether the server's health service says `service` is SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


# The sweep -------------------------------------------------------------------------------------


@dataclass
class FuzzRow:
    """One RPC's results in a sweep."""

    service: str
    method: str
    inputs: int
    codes: dict[str, int]
    # Calls answered UNKNOWN, INTERNAL or DATA_LOSS: the server failed, not the caller.
    server_errors: int
    # Calls answered otherwise than `is_expected` allows.
    unexpected: int
    # Requests the calls got accepted that had not ended after the sweep cancelled them.
    leaked: int
    # Whether the service's health said SERVING after the sweep.
    serving: bool = True


def run_fuzz(targets: Sequence[FuzzTarget], count_per_rpc: int, seed: int) -> list[FuzzRow]:
    """Send `count_per_rpc` seeded random inputs to every RPC of `targets`, cancel every request
    they got accepted, and report per RPC."""
    chooser = RandomChooser(random.Random(seed))
    channels = {t.address: open_channel(t.address) for t in targets}
    rows: list[FuzzRow] = []
    accepted: dict[str, list[str]] = {}
    try:
        for rpc in rpcs(targets):
            channel = channels[rpc.target.address]
            known = [rid for ids in accepted.values() for rid in ids]
            codes: Counter[str] = Counter()
            unexpected = 0
            for _ in range(count_per_rpc):
                fuzz_input = make_input(rpc.method, chooser, known)
                outcome = call(channel, rpc, fuzz_input)
                codes[outcome.code] += 1
                unexpected += not is_expected(rpc.method, fuzz_input, outcome)
                accepted.setdefault(rpc.name, []).extend(outcome.accepted)
            rows.append(_row(rpc, codes, unexpected))
        for row in rows:
            rpc_targets = [
                t for t in targets if any(s.full_name == row.service for s in t.services)
            ]
            row.serving = all(is_serving(channels[t.address], row.service) for t in rpc_targets)
        scheduler = next(
            (r.target for r in rpcs(targets) if r.name.endswith("Service.Cancel")), None
        )
        if scheduler is not None:
            for row in rows:
                ids = accepted.get(f"{row.service}.{row.method}", [])
                row.leaked = len(settle(channels[scheduler.address], scheduler, ids))
    finally:
        for channel in channels.values():
            channel.close()
    return rows


def _row(rpc: Rpc, codes: Counter[str], unexpected: int) -> FuzzRow:
    return FuzzRow(
        service=rpc.method.containing_service.full_name,
        method=rpc.method.name,
        inputs=sum(codes.values()),
        codes=dict(sorted(codes.items())),
        server_errors=sum(n for code, n in codes.items() if code in SERVER_FAULTS),
        unexpected=unexpected,
        leaked=0,
    )


ENDED = frozenset(
    {cpb.REQUEST_STATE_FINISHED, cpb.REQUEST_STATE_FAILED, cpb.REQUEST_STATE_CANCELLED}
)


def settle(
    channel: grpc.Channel, target: FuzzTarget, request_ids: Sequence[str], timeout_s: float = 30.0
) -> list[str]:
    """Cancel every request in `request_ids` and wait for each to end; those that did not (one
    the scheduler no longer knows counts as not ended: it was lost)."""
    metadata = target.metadata()
    cancel = channel.unary_unary("/lamps.v1.SchedulerService/Cancel", _identity, _identity)
    get = channel.unary_unary("/lamps.v1.SchedulerService/GetRequest", _identity, _identity)
    for request_id in set(request_ids):
        body = pb.CancelRequest(request_id=request_id).SerializeToString()
        with contextlib.suppress(grpc.RpcError):  # GetRequest below tells what became of it
            cancel(body, metadata=metadata, timeout=UNARY_TIMEOUT_S)
    pending = set(request_ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = {rid for rid in pending if not _ended(get, rid, metadata)}
        if pending:
            time.sleep(0.1)  # polling: nothing announces a record's end but the record
    return sorted(pending)


def _ended(get: Any, request_id: str, metadata: tuple[tuple[str, str], ...]) -> bool:
    body = pb.GetRequestRequest(request_id=request_id).SerializeToString()
    try:
        raw = get(body, metadata=metadata, timeout=UNARY_TIMEOUT_S)
    except grpc.RpcError:
        return False
    return pb.GetRequestResponse.FromString(raw).record.state in ENDED
