"""The registry: every failure of a call becomes an outcome, limits hold, slots come back."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from lamps.tool_runner.errors import ToolErrorCode, ToolFailure
from lamps.tool_runner.registry import (
    CallLimits,
    Tool,
    ToolOverride,
    ToolRegistry,
    ToolSource,
    ToolSpec,
)

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


class FakeTool(Tool):
    """A tool whose behaviour each test picks: echo, wait on a gate, raise, or return non-text."""

    def __init__(
        self,
        name: str = "echo",
        *,
        timeout_seconds: float = 5.0,
        max_concurrency: int = 4,
        raises: BaseException | None = None,
        result: object = None,
    ) -> None:
        self._spec = ToolSpec(name, "test tool", SCHEMA, timeout_seconds, max_concurrency)
        self.raises = raises
        self.result = result
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        if self.result is not None:
            return self.result  # type: ignore[return-value]  # a plugin that ignores its types
        return json.dumps(arguments, sort_keys=True)


def registry_with(*tools: Tool, limits: CallLimits | None = None) -> ToolRegistry:
    registry = ToolRegistry(limits)
    for tool in tools:
        registry.register(tool, ToolSource.BUILTIN)
    return registry


async def test_a_valid_call_returns_the_tools_text_and_its_duration() -> None:
    outcome = await registry_with(FakeTool()).execute("echo", '{"text": "hi", "n": 2}')
    assert outcome.ok
    assert outcome.output == '{"n": 2, "text": "hi"}'
    assert outcome.duration_seconds >= 0


async def test_empty_arguments_mean_an_empty_object() -> None:
    outcome = await registry_with(FakeTool()).execute("echo", "  ")
    assert (outcome.error, outcome.output) == (None, "{}")


async def test_an_unknown_tool_names_the_tools_there_are() -> None:
    registry = registry_with(FakeTool("echo"), FakeTool("other"))
    outcome = await registry.execute("nope", "{}")
    assert outcome.error is ToolErrorCode.UNKNOWN_TOOL
    assert "no tool is named 'nope'" in outcome.message
    assert "echo, other" in outcome.message


async def test_an_unknown_name_of_a_megabyte_is_quoted_short() -> None:
    # Found by fuzzing: the whole name came back in the result (and went to the log).
    outcome = await registry_with(FakeTool("echo")).execute("n" * 1_000_000, "{}")
    assert outcome.error is ToolErrorCode.UNKNOWN_TOOL
    assert "... (1000000 characters)'" in outcome.message
    assert len(outcome.message) < 200


async def test_a_call_without_a_name_is_invalid() -> None:
    outcome = await registry_with(FakeTool()).execute("", "{}")
    assert outcome.error is ToolErrorCode.INVALID_ARGUMENTS
    assert "names no tool" in outcome.message


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('"text"', "must be a JSON object, not str"),
        ('{"n": NaN}', "NaN is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "bytes; the limit is"),
        ('{"text": 3}', "at 'text': 3 is not of type 'string'"),
        ('{"n": -1}', "at 'n': -1 is less than the minimum of 0"),
        ('{"surprise": 1}', "Additional properties are not allowed"),
    ],
)
async def test_arguments_that_are_not_a_matching_object_are_invalid(
    arguments: str, reason: str
) -> None:
    outcome = await registry_with(FakeTool()).execute("echo", arguments)
    assert outcome.error is ToolErrorCode.INVALID_ARGUMENTS
    assert reason in outcome.message


async def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    registry = registry_with(FakeTool(), limits=CallLimits(max_arguments_bytes=1 << 22))
    outcome = await registry.execute("echo", '{"text": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert outcome.error is ToolErrorCode.INVALID_ARGUMENTS


async def test_a_slow_tool_times_out_at_its_own_timeout() -> None:
    tool = FakeTool(timeout_seconds=0.05)
    tool.gate = asyncio.Event()
    outcome = await registry_with(tool).execute("echo", "{}")
    assert outcome.error is ToolErrorCode.TIMEOUT
    assert "did not answer within 0.05 s" in outcome.message


async def test_the_smaller_of_the_callers_and_the_tools_timeout_applies() -> None:
    tool = FakeTool(timeout_seconds=30)
    tool.gate = asyncio.Event()
    registry = registry_with(tool)
    outcome = await registry.execute("echo", "{}", timeout_seconds=0.05)
    assert outcome.error is ToolErrorCode.TIMEOUT
    assert "0.05 s" in outcome.message
    short = FakeTool("short", timeout_seconds=0.05)
    short.gate = asyncio.Event()
    registry.register(short, ToolSource.BUILTIN)
    outcome = await registry.execute("short", "{}", timeout_seconds=60)
    assert "0.05 s" in outcome.message


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
async def test_a_negative_or_nan_timeout_is_invalid(seconds: float) -> None:
    outcome = await registry_with(FakeTool()).execute("echo", "{}", timeout_seconds=seconds)
    assert outcome.error is ToolErrorCode.INVALID_ARGUMENTS


async def test_a_tool_failure_reaches_the_model_word_for_word() -> None:
    tool = FakeTool(raises=ToolFailure("the file is empty"))
    outcome = await registry_with(tool).execute("echo", "{}")
    assert (outcome.error, outcome.message) == (ToolErrorCode.TOOL_FAILED, "the file is empty")


async def test_an_unexpected_error_is_logged_and_its_details_kept_from_the_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tool = FakeTool(raises=KeyError("/secret/path"))
    with caplog.at_level(logging.ERROR, logger="lamps.tool_runner"):
        outcome = await registry_with(tool).execute("echo", "{}")
    assert outcome.error is ToolErrorCode.TOOL_FAILED
    assert "failed unexpectedly (KeyError)" in outcome.message
    assert "/secret/path" not in outcome.message
    assert any(record.exc_info for record in caplog.records)


async def test_a_tools_own_timeout_error_is_a_failure_not_our_timeout() -> None:
    outcome = await registry_with(FakeTool(raises=TimeoutError())).execute("echo", "{}")
    assert outcome.error is ToolErrorCode.TOOL_FAILED


async def test_a_tool_returning_something_other_than_text_fails() -> None:
    outcome = await registry_with(FakeTool(result=42)).execute("echo", "{}")
    assert outcome.error is ToolErrorCode.TOOL_FAILED


async def test_long_output_is_cut_with_a_note() -> None:
    registry = registry_with(FakeTool(result="x" * 100), limits=CallLimits(max_output_chars=10))
    outcome = await registry.execute("echo", "{}")
    assert outcome.output == "x" * 10 + "\n[output truncated: 90 more characters]"


async def test_a_full_concurrency_limit_answers_busy_at_once() -> None:
    tool = FakeTool(max_concurrency=1)
    tool.gate = asyncio.Event()
    registry = registry_with(tool)
    first = asyncio.create_task(registry.execute("echo", "{}"))
    await tool.started.wait()
    second = await registry.execute("echo", "{}")
    assert second.error is ToolErrorCode.BUSY
    assert "all 1 of its slots are in use" in second.message
    tool.gate.set()
    assert (await first).ok


async def test_with_a_busy_wait_a_call_takes_the_slot_freed_meanwhile() -> None:
    tool = FakeTool(max_concurrency=1)
    tool.gate = asyncio.Event()
    registry = registry_with(tool, limits=CallLimits(busy_wait_seconds=30))
    first = asyncio.create_task(registry.execute("echo", "{}"))
    await tool.started.wait()
    second = asyncio.create_task(registry.execute("echo", "{}"))
    await asyncio.sleep(0.05)
    assert not second.done()
    tool.gate.set()
    assert (await first).ok
    assert (await second).ok


async def test_a_busy_wait_ends_in_busy_when_no_slot_frees() -> None:
    tool = FakeTool(max_concurrency=1)
    tool.gate = asyncio.Event()
    registry = registry_with(tool, limits=CallLimits(busy_wait_seconds=0.05))
    first = asyncio.create_task(registry.execute("echo", "{}"))
    await tool.started.wait()
    assert (await registry.execute("echo", "{}")).error is ToolErrorCode.BUSY
    tool.gate.set()
    await first


@pytest.mark.parametrize("ending", ["timeout", "error", "cancel"])
async def test_a_slot_comes_back_however_the_call_ends(ending: str) -> None:
    tool = FakeTool(max_concurrency=1, timeout_seconds=0.05 if ending == "timeout" else 5)
    tool.gate = asyncio.Event()
    if ending == "error":
        tool.gate.set()
        tool.raises = ValueError("boom")
    registry = registry_with(tool)
    call = asyncio.create_task(registry.execute("echo", "{}"))
    await tool.started.wait()
    if ending == "cancel":
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        assert not (await call).ok
    tool.gate.set()
    tool.raises = None
    assert (await registry.execute("echo", "{}")).ok


def test_two_tools_with_one_name_are_refused() -> None:
    registry = registry_with(FakeTool("echo"))
    with pytest.raises(ValueError, match="two tools are named 'echo'"):
        registry.register(FakeTool("echo"), ToolSource.ENTRY_POINT)


def test_an_invalid_schema_is_refused_at_registration() -> None:
    class BadSchema(FakeTool):
        @property
        def spec(self) -> ToolSpec:
            return ToolSpec("bad", "", {"type": "no-such-type"})

    with pytest.raises(ValueError, match="invalid arguments schema"):
        registry_with(BadSchema())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "must be 1-128 letters"),
        ({"name": "has space"}, "must be 1-128 letters"),
        ({"name": "x", "timeout_seconds": 0}, "timeout_seconds must be a positive number"),
        ({"name": "x", "timeout_seconds": float("inf")}, "timeout_seconds"),
        ({"name": "x", "max_concurrency": 0}, "max_concurrency must be at least 1"),
    ],
)
def test_a_spec_refuses_unusable_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToolSpec(description="", arguments_schema={}, **kwargs)


def test_overrides_replace_the_tools_own_limits_and_listing_is_by_name() -> None:
    registry = ToolRegistry()
    registry.register(FakeTool("zeta"), ToolSource.MCP)
    info = registry.register(
        FakeTool("alpha"), ToolSource.CONFIG, ToolOverride(timeout_seconds=1.5, max_concurrency=2)
    )
    assert (info.spec.timeout_seconds, info.spec.max_concurrency) == (1.5, 2)
    assert [t.spec.name for t in registry.tools()] == ["alpha", "zeta"]
    assert registry.get("zeta") is not None
    assert registry.get("zeta").source is ToolSource.MCP  # type: ignore[union-attr]


async def test_metrics_count_calls_by_outcome_and_fold_unknown_names() -> None:
    registry = registry_with(FakeTool("metered"))

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("lamps_tool_calls_total", tool="metered", outcome="ok")
    before_unknown = sample("lamps_tool_calls_total", tool="(unknown)", outcome="unknown_tool")
    before_errors = sample("lamps_tool_errors_total", tool="metered", code="invalid_arguments")
    await registry.execute("metered", "{}")
    await registry.execute("metered", "[]")
    await registry.execute("a-name-nobody-registered", "{}")
    assert sample("lamps_tool_calls_total", tool="metered", outcome="ok") == before_ok + 1
    assert (
        sample("lamps_tool_errors_total", tool="metered", code="invalid_arguments")
        == before_errors + 1
    )
    assert (
        sample("lamps_tool_calls_total", tool="(unknown)", outcome="unknown_tool")
        == before_unknown + 1
    )
    assert sample("lamps_tool_calls_total", tool="a-name-nobody-registered", outcome="ok") == 0
    assert sample("lamps_tool_call_duration_seconds_count", tool="metered") >= 2
