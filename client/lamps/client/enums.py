"""The SDK's closed sets as string enums (`RequestState.FINISHED == "finished"`), and their
conversion from the protos' integer enums."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from lamps.v1 import common_pb2 as cpb


class RequestState(enum.StrEnum):
    """Where a request is in its lifecycle."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    IN_TOOL = "in_tool"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True for the three final states."""
        return self in (RequestState.FINISHED, RequestState.FAILED, RequestState.CANCELLED)


class Strategy(enum.StrEnum):
    """How a request's KV cache is kept while it waits on a tool call."""

    UNSPECIFIED = "unspecified"
    PRESERVE = "preserve"
    DISCARD = "discard"
    SWAP = "swap"


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


class ToolErrorCode(enum.StrEnum):
    """What went wrong in a tool call."""

    UNSPECIFIED = "unspecified"
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    TIMEOUT = "timeout"
    TOOL_FAILED = "tool_failed"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


class WorkerState(enum.StrEnum):
    """Whether a worker takes new work."""

    UNSPECIFIED = "unspecified"
    READY = "ready"
    DRAINING = "draining"


_E = TypeVar("_E", bound=enum.StrEnum)


def enum_from_proto(kind: type[_E], descriptor: Any, value: int, prefix: str) -> _E:
    """The SDK enum member for a proto enum value; UNSPECIFIED for a value newer than the SDK."""
    try:
        name = descriptor.Name(value)
    except ValueError:
        return kind("unspecified")
    return kind(name.removeprefix(prefix).lower())


def strategy_from_proto(value: int) -> Strategy:
    return enum_from_proto(Strategy, cpb.Strategy, value, "STRATEGY_")


def state_from_proto(value: int) -> RequestState:
    return enum_from_proto(RequestState, cpb.RequestState, value, "REQUEST_STATE_")


def reason_from_proto(value: int) -> FinishReason:
    return enum_from_proto(FinishReason, cpb.FinishReason, value, "FINISH_REASON_")
