"""Checks on what clients send, before anything is stored: each failure names the field and what
to change, with the gRPC status code it deserves."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import grpc

from lamps.common.text import shorten
from lamps.v1 import scheduler_pb2 as pb

MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_LABELS = 64
MAX_LABEL_CHARS = 256
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1024
# Tool names as the tool runner accepts them (1-128 characters), and how many a request may list.
MAX_TOOL_NAME_CHARS = 128
MAX_TOOLS = 64
MAX_MODEL_CHARS = 256


class RequestError(Exception):
    """A request refused at the edge, with its status code."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Sent as the `retry-after` trailing metadata (whole seconds) when set.
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Limits:
    """What the scheduler accepts (from its configuration)."""

    max_prompt_chars: int
    max_prompt_tokens: int
    max_tokens: int
    max_replay_segments: int
    needs_replay: bool = False


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def validate_generate(
    request: pb.GenerateRequest, limits: Limits, known_tools: Collection[str] | None
) -> int:
    """Raise RequestError if `request` cannot run; return the request's token budget."""
    _check_prompt(request, limits)
    _check_sampling(request, limits)
    _check_labels(request)
    _check_model(request)
    replay_tokens = _check_replay(request, limits)
    _check_tools(request, known_tools)
    if limits.needs_replay and not request.HasField("replay"):
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "this scheduler runs the oracle-lamps policy, which needs the true lengths: only "
            "replayed requests (GenerateRequest.replay) can run on it",
        )
    budget = request.sampling.max_tokens or (replay_tokens or limits.max_tokens)
    if replay_tokens and budget < replay_tokens:
        raise _invalid(
            f"sampling.max_tokens={budget} is below the {replay_tokens} tokens the replay "
            "script generates; raise it or leave it 0"
        )
    return budget


def _check_prompt(request: pb.GenerateRequest, limits: Limits) -> None:
    has_text, has_ids = bool(request.prompt), bool(request.prompt_token_ids)
    if not has_text and not has_ids:
        raise _invalid("the prompt is empty: set prompt (text) or prompt_token_ids")
    if has_text and has_ids:
        raise _invalid("set exactly one of prompt and prompt_token_ids, not both")
    if len(request.prompt) > limits.max_prompt_chars:
        raise _invalid(
            f"the prompt has {len(request.prompt)} characters; the limit is "
            f"{limits.max_prompt_chars}"
        )
    if len(request.prompt_token_ids) > limits.max_prompt_tokens:
        raise _invalid(
            f"the prompt has {len(request.prompt_token_ids)} tokens; the limit is "
            f"{limits.max_prompt_tokens}"
        )


def _check_sampling(request: pb.GenerateRequest, limits: Limits) -> None:
    sampling = request.sampling
    if sampling.max_tokens > limits.max_tokens:
        raise _invalid(
            f"sampling.max_tokens={sampling.max_tokens} is above this scheduler's limit of "
            f"{limits.max_tokens}"
        )
    if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        raise _invalid(f"sampling.temperature={sampling.temperature} must be 0 or more")
    if not (math.isfinite(sampling.top_p) and 0 <= sampling.top_p <= 1):
        raise _invalid(f"sampling.top_p={sampling.top_p} must be in (0, 1], or 0 for 1")
    if len(sampling.stop) > MAX_STOP_SEQUENCES or any(not stop for stop in sampling.stop):
        raise _invalid(f"sampling.stop takes at most {MAX_STOP_SEQUENCES} non-empty strings")
    if any(len(stop) > MAX_STOP_CHARS for stop in sampling.stop):
        raise _invalid(f"each of sampling.stop may have at most {MAX_STOP_CHARS} characters")


def _check_model(request: pb.GenerateRequest) -> None:
    if len(request.model) > MAX_MODEL_CHARS:
        raise _invalid(
            f"model has {len(request.model)} characters; model names have at most {MAX_MODEL_CHARS}"
        )


def _check_labels(request: pb.GenerateRequest) -> None:
    if len(request.labels) > MAX_LABELS:
        raise _invalid(f"{len(request.labels)} labels given; at most {MAX_LABELS} are kept")
    for key, value in request.labels.items():
        if not key or len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
            raise _invalid(
                f"label {key[:40]!r}: keys must be non-empty and keys and values at most "
                f"{MAX_LABEL_CHARS} characters"
            )


def _check_replay(request: pb.GenerateRequest, limits: Limits) -> int:
    if not request.HasField("replay"):
        return 0
    segments = request.replay.segments
    if not segments:
        raise _invalid("replay.segments is empty: a replay needs at least one segment")
    if len(segments) > limits.max_replay_segments:
        raise _invalid(
            f"replay has {len(segments)} segments; the limit is {limits.max_replay_segments}"
        )
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        where = f"replay.segments[{index}]"
        if len(segment.tool) > MAX_TOOL_NAME_CHARS:
            raise _invalid(f"{where}.tool is longer than {MAX_TOOL_NAME_CHARS} characters")
        if segment.tool_output_tokens > limits.max_prompt_tokens:
            raise _invalid(
                f"{where}.tool_output_tokens={segment.tool_output_tokens} is above this "
                f"scheduler's context limit of {limits.max_prompt_tokens} tokens"
            )
        if last and segment.tool:
            raise _invalid(f"{where} is the last segment and must not call a tool")
        if not last and not segment.tool:
            raise _invalid(f"{where} names no tool; every segment but the last ends in a call")
        duration = segment.tool_duration_seconds
        if not (math.isfinite(duration) and duration >= 0):
            raise _invalid(f"{where}.tool_duration_seconds={duration} must be 0 or more")
    total = sum(segment.output_tokens for segment in segments)
    if total > limits.max_tokens:
        raise _invalid(
            f"the replay generates {total} tokens; this scheduler's limit is {limits.max_tokens}"
        )
    return total


def _check_tools(request: pb.GenerateRequest, known: Collection[str] | None) -> None:
    if len(request.tools) > MAX_TOOLS:
        raise _invalid(f"{len(request.tools)} tools listed; a request may list at most {MAX_TOOLS}")
    if any(len(name) > MAX_TOOL_NAME_CHARS for name in request.tools):
        raise _invalid(f"tool names have at most {MAX_TOOL_NAME_CHARS} characters")
    if known is None:
        return  # the tool runner is unreachable: calls will fail with a readable tool error
    named = list(request.tools) + [s.tool for s in request.replay.segments if s.tool]
    unknown = sorted({name for name in named if name not in known})
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        shown = ", ".join(shorten(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise _invalid(f"unknown tools {shown}{more}; the tool runner has: {listed}")


def validate_idempotency_key(key: str) -> None:
    if "\0" in key:
        # NUL separates a tenant from its keys in the store (see Scheduler.submit).
        raise _invalid("the idempotency key contains a NUL character")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise _invalid(
            f"the idempotency key has {len(key)} characters; at most "
            f"{MAX_IDEMPOTENCY_KEY_CHARS} are allowed"
        )


def validate_request_id(request_id: str) -> None:
    if not request_id:
        raise _invalid("request_id is empty: pass the id Submit or Generate returned")
    if len(request_id) > 128:
        raise _invalid("request_id is too long to be an id this scheduler made")
