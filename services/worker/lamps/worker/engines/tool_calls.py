"""Tool calls in the model's output, Hermes style:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

The `vllm` engine ends a generation chunk on the closing marker's token id (a stop token, which vLLM
allows in the streaming-input sessions that Preserve needs, where stop strings are refused). So a
model's tool calls are detected when its tokenizer holds `</tool_call>` as one token, as the
Hermes, Qwen 2.5 and later tool-use models' tokenizers do; for others the engine runs only real
text and trace replay. Pure functions: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments_json: str  # a JSON object, compact


@dataclass(frozen=True, slots=True)
class Markers:
    """The token ids of the opening and closing markers in one tokenizer."""

    open_id: int
    close_id: int


def find_markers(vocab: dict[str, int]) -> Markers | None:
    """The markers' ids when both are single tokens of this vocabulary, else None."""
    open_id, close_id = vocab.get(OPEN), vocab.get(CLOSE)
    if open_id is None or close_id is None:
        return None
    return Markers(open_id, close_id)


def call_span(token_ids: Sequence[int], markers: Markers) -> tuple[int, int] | None:
    """Where the body of the call that `token_ids` ends with lies: (start, end) indices, or None
    when the ids do not end with the closing marker after an opening one."""
    if not token_ids or token_ids[-1] != markers.close_id:
        return None
    for index in range(len(token_ids) - 2, -1, -1):
        if token_ids[index] == markers.open_id:
            return index + 1, len(token_ids) - 1
    return None


def parse_call(body: str) -> ToolCall | None:
    """The call a marker pair encloses, or None when it is not `{"name": str, "arguments": {}}`
    (a model that writes a malformed call has written text, not a call)."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    name, arguments = value.get("name"), value.get("arguments", {})
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ToolCall(name, json.dumps(arguments, separators=(",", ":")))
