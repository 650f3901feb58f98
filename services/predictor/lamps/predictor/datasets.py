"""Training examples from the three formats the predictor learns from.

- Shared traces (PAPER.md section 3), by name (`lamps_single_api`, `infercept_mixed`) or by path to
  their JSON: only requests whose segments carry text; the tool is named by the request's wording
  ("text to speech", "image"), else by the call's duration (`lamps.model.tools.nearest_kind`).
- Agent conversations in FireAct's JSONL (`{"id", "prompt", "turns": [...]}`), by name (`fireact`,
  shipped with this package) or path: the first turn's text is the pre-call output (it ends in the
  action that makes the call), a `search` is the question-answering tool, `finish` is no tool, and
  the next turn is the post-call output.
- Generic JSONL, one `{"prompt", "pre_call_tokens", "tool", "duration_seconds",
  "post_call_tokens"}` per line (`"id"` optional; `tool` null, "" or "none" for no call).

Token counts come from the backbone's tokenizer, passed in as `count_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lamps.model.tools import ToolKind
from lamps.model.workload import BUNDLED_TRACES, TraceError, read_bundled_trace, segment_tool_kind
from lamps.predictor.labels import NO_TOOL

TokenCounter = Callable[[Sequence[str]], list[int]]

FIREACT = "fireact"
TRACE_NAMES = BUNDLED_TRACES
# FireAct's tool names mapped to the tool types of PAPER.md section 4.
FIREACT_TOOLS = {"search": ToolKind.QA.value}


class DatasetError(ValueError):
    """A training source that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    """One request: its prompt and what happened before, at and after its first tool call."""

    request_id: str
    prompt: str
    pre_call_tokens: int
    # The tool of the first call, or NO_TOOL when the request finished without one.
    tool: str
    post_call_tokens: int
    duration_seconds: float | None = None


def load_examples(source: str, count_tokens: TokenCounter) -> list[Example]:
    """The examples of a named dataset or a file; raises DatasetError on anything unreadable."""
    if source == FIREACT:
        shipped = resources.files("lamps.predictor").joinpath("data", "fireact_agent_traces.jsonl")
        return fireact_examples(_jsonl(shipped.read_text("utf-8"), "fireact"), count_tokens)
    if source in TRACE_NAMES:
        return trace_examples(_named_trace(source), count_tokens)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"no dataset {source!r}: not a file, nor one of {', '.join((FIREACT, *TRACE_NAMES))}"
        )
    text = path.read_text("utf-8")
    if path.suffix == ".json":
        return trace_examples(_json(text, str(path)), count_tokens)
    rows = list(_jsonl(text, str(path)))
    if rows and "turns" in rows[0]:
        return fireact_examples(iter(rows), count_tokens)
    return generic_examples(rows, str(path))


def _named_trace(name: str) -> Any:
    """A shared trace shipped in `lamps.model`'s package data."""
    try:
        return read_bundled_trace(name)
    except TraceError as exc:
        raise DatasetError(f"{exc}; give the path to its JSON file instead") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not JSON: {exc}") from None


def _jsonl(text: str, where: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = _json(line, f"{where} line {number}")
        if not isinstance(row, dict):
            raise DatasetError(f"{where} line {number}: expected a JSON object")
        yield row


def fireact_examples(
    rows: Iterator[Mapping[str, Any]], count_tokens: TokenCounter
) -> list[Example]:
    """Examples from FireAct agent conversations."""
    parsed: list[tuple[str, str, str, str, str]] = []
    for index, row in enumerate(rows):
        try:
            turns = row["turns"]
            first = turns[0]
            tool = FIREACT_TOOLS.get(first["tool"], first["tool"]) if first["tool"] else NO_TOOL
            after = turns[1]["output"] if tool != NO_TOOL and len(turns) > 1 else ""
            parsed.append((str(row.get("id", index)), row["prompt"], first["output"], tool, after))
        except (KeyError, IndexError, TypeError) as exc:
            raise DatasetError(f"agent conversation {index}: missing {exc}") from None
    pre = count_tokens([p[2] for p in parsed])
    post = count_tokens([p[4] for p in parsed])
    return [
        Example(request_id, prompt, pre_n, tool, post_n)
        for (request_id, prompt, _, tool, _), pre_n, post_n in zip(parsed, pre, post, strict=True)
    ]


def trace_tool(segment: Mapping[str, Any]) -> str:
    """The tool type of a trace segment's call, from its wording, else from its duration."""
    return segment_tool_kind(segment).value


def trace_examples(trace: Any, count_tokens: TokenCounter) -> list[Example]:
    """Examples from a shared trace: its requests whose first segment carries text.

    The traces cut each completion at 256 characters, so long pre-call outputs are undercounted.
    """
    if not isinstance(trace, dict):
        raise DatasetError("a trace is a JSON object mapping request ids to segment lists")
    chosen: list[tuple[str, str, str, str, str, float | None]] = []
    for request_id, segments in trace.items():
        if not segments or "prompt" not in segments[0]:
            continue
        first = segments[0]
        called = "api_time" in first
        after = segments[1].get("completion", "") if called and len(segments) > 1 else ""
        tool = trace_tool(first) if called else NO_TOOL
        duration = float(first["api_time"]) if called else None
        chosen.append(
            (str(request_id), first["prompt"], first["completion"], tool, after, duration)
        )
    pre = count_tokens([c[2] for c in chosen])
    post = count_tokens([c[4] for c in chosen])
    return [
        Example(request_id, prompt, pre_n, tool, post_n, duration)
        for (request_id, prompt, _, tool, _, duration), pre_n, post_n in zip(
            chosen, pre, post, strict=True
        )
    ]


def generic_examples(rows: Sequence[Mapping[str, Any]], where: str) -> list[Example]:
    """Examples from JSONL rows that already carry token counts."""
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            tool = row.get("tool") or NO_TOOL
            duration = row.get("duration_seconds")
            examples.append(
                Example(
                    request_id=str(row.get("id", number)),
                    prompt=str(row["prompt"]),
                    pre_call_tokens=_count(row["pre_call_tokens"]),
                    tool=str(tool),
                    post_call_tokens=_count(row.get("post_call_tokens", 0)),
                    duration_seconds=None if duration is None else float(duration),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where} line {number}: {exc}") from None
    return examples


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"token counts are integers >= 0, not {value!r}")
    return value
