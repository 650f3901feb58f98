"""A trace's arrivals as replayed requests: the prompt's length, each segment's forced output, and
each call to the emulated tool of its type, with the trace's duration and returned tokens."""

from __future__ import annotations

from typing import Any

from lamps.client import ReplaySegment
from lamps.model.workload import Arrival, RequestSpec

# Token ids of a replayed prompt: any ids do for the sim engine; a real model reads them as text.
_PROMPT_IDS = range(100, 1100)


def prompt_token_ids(tokens: int) -> list[int]:
    """`tokens` deterministic prompt token ids."""
    return [_PROMPT_IDS[index % len(_PROMPT_IDS)] for index in range(max(tokens, 1))]


def replay_segments(spec: RequestSpec) -> list[ReplaySegment]:
    """The request's script: every segment's output, then its call (`emulated.<type>`)."""
    segments = []
    for segment in spec.segments:
        call = segment.call
        segments.append(
            ReplaySegment(
                output_tokens=segment.output_tokens,
                tool=f"emulated.{call.kind.value}" if call is not None else "",
                tool_duration_s=call.duration_s if call is not None else 0.0,
                tool_output_tokens=call.return_tokens if call is not None else 0,
            )
        )
    return segments


def request_arguments(arrival: Arrival) -> dict[str, Any]:
    """Keyword arguments of `Client.generate` that replay `arrival`'s request."""
    spec = arrival.spec
    return {
        "prompt_token_ids": prompt_token_ids(spec.prompt_tokens),
        "replay": replay_segments(spec),
        "labels": {"lamps.bench/request": arrival.request_id},
    }
