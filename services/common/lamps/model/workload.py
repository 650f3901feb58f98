"""Workload traces: requests as segments of output separated by tool calls, and Poisson arrivals.

A trace file maps a request id to its segments (PAPER.md section 3). Segments are numeric
(`prompt_tokens`, `completion_tokens`, `api_time`, `api_token_length`) or text (`prompt`,
`completion`, `api_token`, `api_time`). The context grows by each segment's output and by what
each tool returns, so a request is its first prompt plus, per segment, the output tokens generated
and the call that follows (duration and returned tokens).

Text is counted in tokens with `count_tokens`: words and single punctuation marks, the
pre-tokenization step of GPT-2's byte-level BPE. It undercounts BPE by the splits of rare words
(roughly 10-30% for English), which is fine for a workload whose text completions are already cut
at 256 characters in the source. Later text prompts repeat the context so far, so only the first
prompt is counted and the context is grown from completions and tool returns, as with numbers.

Tool types: numeric segments carry no tool name, so the call is labelled with the type whose mean
duration is nearest on a log scale. Text prompts name their tool ("Convert this to text to speech.",
"Generate an image about this."); other text calls waiting a second or more are a human's reply
(chatbot).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lamps.model.tools import ToolKind, nearest_kind

BUNDLED_TRACES = ("lamps_single_api", "infercept_mixed")

_WORD = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Tokens in `text`, counted as words and punctuation marks (see the module docstring)."""
    return len(_WORD.findall(text))


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """A tool call at the end of a segment, as the trace recorded it."""

    kind: ToolKind
    duration_s: float
    return_tokens: int


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """Output generated before a tool call, or before the end of the request (`call` is None)."""

    output_tokens: int
    call: ToolCallSpec | None


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a trace: its prompt and its segments, the last one without a call."""

    request_id: str
    prompt_tokens: int
    segments: tuple[SegmentSpec, ...]
    prompt_text: str | None = None

    @property
    def calls(self) -> tuple[ToolCallSpec, ...]:
        return tuple(segment.call for segment in self.segments if segment.call is not None)

    @property
    def output_tokens(self) -> int:
        return sum(segment.output_tokens for segment in self.segments)

    @property
    def tool_time_s(self) -> float:
        return sum(call.duration_s for call in self.calls)

    def context_before(self, segment: int) -> int:
        """Context tokens when segment `segment` starts generating."""
        tokens = self.prompt_tokens
        for previous in self.segments[:segment]:
            tokens += previous.output_tokens
            if previous.call is not None:
                tokens += previous.call.return_tokens
        return tokens


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    requests: tuple[RequestSpec, ...]


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request of the workload and when it arrives (seconds from the start)."""

    time_s: float
    request_id: str
    spec: RequestSpec


class TraceError(ValueError):
    """A trace file that cannot be read, with what is wrong and where."""


def read_bundled_trace(name: str) -> object:
    """The parsed JSON of a trace shipped with the package (`BUNDLED_TRACES`)."""
    if name not in BUNDLED_TRACES:
        known = ", ".join(BUNDLED_TRACES)
        raise TraceError(f"no bundled trace {name!r}; bundled traces: {known}")
    source = resources.files("lamps.model").joinpath(f"traces/{name}.json")
    return _decode(source.read_text(encoding="utf-8"), name)


def load_trace(name_or_path: str | Path) -> Trace:
    """A bundled trace by name (`lamps_single_api`, `infercept_mixed`) or a file in that format."""
    path = Path(name_or_path)
    if str(name_or_path) in BUNDLED_TRACES:
        name = str(name_or_path)
        return parse_trace(name, read_bundled_trace(name))
    if not path.is_file():
        known = ", ".join(BUNDLED_TRACES)
        raise TraceError(
            f"no trace {str(name_or_path)!r}: name a bundled trace ({known}) or a file"
        )
    return parse_trace(path.stem, _decode(path.read_text(encoding="utf-8"), path.stem))


def _decode(text: str, name: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TraceError(f"trace {name!r} is not valid JSON: {error}") from None


def parse_trace(name: str, data: object) -> Trace:
    if not isinstance(data, Mapping) or not data:
        raise TraceError(f"trace {name!r} must be a non-empty object of request id -> segments")
    requests = [_parse_request(name, str(key), value) for key, value in data.items()]
    return Trace(name=name, requests=tuple(requests))


def _parse_request(trace: str, request_id: str, raw: object) -> RequestSpec:
    where = f"trace {trace!r}, request {request_id!r}"
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise TraceError(f"{where}: expected a non-empty list of segments")
    segments: list[SegmentSpec] = []
    first = raw[0]
    if not isinstance(first, Mapping):
        raise TraceError(f"{where}, segment 0: expected an object")
    text = "prompt" in first
    try:
        prompt_tokens = count_tokens(first["prompt"]) if text else int(first["prompt_tokens"])
        for index, segment in enumerate(raw):
            last = index == len(raw) - 1
            segments.append(_parse_segment(segment, text=text, last=last))
    except (KeyError, TypeError, ValueError) as error:
        raise TraceError(f"{where}: malformed segment ({error!r})") from None
    return RequestSpec(
        request_id=request_id,
        prompt_tokens=max(prompt_tokens, 1),
        segments=tuple(segments),
        prompt_text=first["prompt"] if text else None,
    )


def _parse_segment(raw: Mapping[str, Any], *, text: bool, last: bool) -> SegmentSpec:
    output = count_tokens(raw["completion"]) if text else int(raw["completion_tokens"])
    call = None
    # The last segment ends the request even where a trace records a trailing call.
    if "api_time" in raw and not last:
        duration = float(raw["api_time"])
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(f"api_time must be a non-negative number, got {duration}")
        returned = count_tokens(raw["api_token"]) if text else int(raw["api_token_length"])
        call = ToolCallSpec(
            kind=segment_tool_kind(raw), duration_s=duration, return_tokens=max(returned, 0)
        )
    return SegmentSpec(output_tokens=max(output, 1), call=call)


def segment_tool_kind(segment: Mapping[str, Any]) -> ToolKind:
    """The tool type of a trace segment's call (see the module docstring)."""
    duration_s = float(segment["api_time"])
    if "prompt" not in segment:
        return nearest_kind(duration_s)
    lowered = f"{segment['prompt'][-300:]} {segment.get('api_token', '')}".lower()
    if "text to speech" in lowered:
        return ToolKind.TEXT_TO_SPEECH
    if "image" in lowered:
        return ToolKind.IMAGE_GENERATION
    if duration_s >= 1.0:
        return ToolKind.CHATBOT
    return nearest_kind(duration_s)


def poisson_arrivals(trace: Trace, rate: float, duration_s: float, seed: int = 0) -> list[Arrival]:
    """Poisson arrivals at `rate` per second for `duration_s`, requests drawn with replacement."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    rng = random.Random(seed)
    return list(_arrivals(trace.requests, rate, duration_s, rng))


def _arrivals(
    requests: Sequence[RequestSpec], rate: float, duration_s: float, rng: random.Random
) -> Iterator[Arrival]:
    now = rng.expovariate(rate)
    index = 0
    while now < duration_s:
        spec = rng.choice(requests)
        yield Arrival(time_s=now, request_id=f"{spec.request_id}-{index}", spec=spec)
        index += 1
        now += rng.expovariate(rate)
