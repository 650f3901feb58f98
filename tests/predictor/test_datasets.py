"""Training examples from FireAct's agent JSONL, the shared traces' JSON and generic JSONL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from lamps.predictor import datasets
from lamps.predictor.datasets import DatasetError, load_examples, trace_tool


def words(texts: Sequence[str]) -> list[int]:
    """A stand-in tokenizer: one token per word."""
    return [len(text.split()) for text in texts]


def test_the_shipped_fireact_conversations_load_by_name() -> None:
    examples = load_examples("fireact", words)
    assert len(examples) == 2061
    assert sum(e.tool == "none" for e in examples) == 975
    assert {e.tool for e in examples} == {"none", "qa"}
    assert all(e.post_call_tokens == 0 for e in examples if e.tool == "none")
    first = examples[0]
    assert first.request_id == "fireact-00000"
    assert first.tool == "qa"
    assert first.prompt.startswith("Question: A small creek")
    assert first.pre_call_tokens > 50  # the whole first turn, action included


def test_fireact_format_is_recognised_in_any_file(tmp_path: Path) -> None:
    row = {
        "id": "a",
        "prompt": "Who won?",
        "turns": [
            {"output": "Thought: look it up\nAction: search[x]", "tool": "search"},
            {"output": "Action: finish[y]", "tool": None},
        ],
    }
    path = tmp_path / "agent.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,) = load_examples(str(path), words)
    assert (example.tool, example.pre_call_tokens, example.post_call_tokens) == ("qa", 6, 2)


def test_a_trace_keeps_text_requests_and_names_tools(tmp_path: Path) -> None:
    trace = {
        "numeric": [{"prompt_tokens": 5, "completion_tokens": 7, "api_time": 1.0}],
        "tts": [
            {"prompt": "read it", "completion": "a b c", "api_token": "Convert this to text to "
             "speech.", "api_time": 17.0},
            {"prompt": "read it a b c", "completion": "d e"},
        ],
        "fast": [{"prompt": "add", "completion": "x", "api_time": 0.0001}, {"prompt": "p",
                  "completion": "y z"}],
        "done": [{"prompt": "hi", "completion": "hello there"}],
    }  # fmt: skip
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    examples = {e.request_id: e for e in load_examples(str(path), words)}
    assert set(examples) == {"tts", "fast", "done"}
    assert (examples["tts"].tool, examples["tts"].pre_call_tokens) == ("text_to_speech", 3)
    assert (examples["tts"].post_call_tokens, examples["tts"].duration_seconds) == (2, 17.0)
    assert examples["fast"].tool == "math"
    assert (examples["done"].tool, examples["done"].post_call_tokens) == ("none", 0)


def test_trace_tools_come_from_wording_before_duration() -> None:
    assert trace_tool({"prompt": "Generate an image about this.", "api_time": 0.0001}) == (
        "image_generation"
    )
    assert trace_tool({"prompt": "chat", "api_time": 30.0}) == "chatbot"


def test_a_trace_name_not_installed_says_to_give_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "TRACE_NAMES", (*datasets.TRACE_NAMES, "absent_trace"))
    with pytest.raises(DatasetError, match="give the path to its JSON file"):
        load_examples("absent_trace", words)


def test_generic_rows_are_validated_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "generic.jsonl"
    good = {"prompt": "p", "pre_call_tokens": 3, "tool": None, "post_call_tokens": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "pre_call_tokens": -1}) + "\n")
    with pytest.raises(DatasetError, match=r"generic\.jsonl line 2: token counts are integers"):
        load_examples(str(path), words)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DatasetError, match="line 2: not JSON"):
        load_examples(str(path), words)


def test_an_unknown_source_lists_the_names() -> None:
    with pytest.raises(DatasetError, match="fireact, lamps_single_api, infercept_mixed"):
        load_examples("no-such-dataset", words)
