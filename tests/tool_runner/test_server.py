"""The ToolRunner service through a real process: every failure is a readable result."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc import aio

from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from lamps.v1 import tool_runner_pb2_grpc as pb_grpc
from tests.support.processes import ServiceProcess
from tests.tool_runner.conftest import RunningToolRunner, start_tool_runner

OK = common_pb2.TOOL_ERROR_CODE_UNSPECIFIED
INVALID = common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
POLL_SECONDS = 0.05


def scrape(process: ServiceProcess) -> str:
    url = f"http://127.0.0.1:{process.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def sample(process: ServiceProcess, series: str) -> float:
    """The value of one series, such as `lamps_tool_calls_in_flight{tool="x"}`; 0 if absent."""
    for line in scrape(process).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll `condition` (in a thread: it may block) until it holds."""
    for _ in range(int(seconds / POLL_SECONDS)):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"not true within {seconds} s")


async def test_list_tools_shows_every_source_with_limits_and_schemas(
    tool_runner: RunningToolRunner,
) -> None:
    listed = await tool_runner.stub.ListTools(pb.ListToolsRequest(), timeout=10)
    tools = {tool.name: tool for tool in listed.tools}
    assert [tool.name for tool in listed.tools] == sorted(tools)
    expected_sources = {
        "calculator": pb.TOOL_SOURCE_BUILTIN,
        "emulated.qa": pb.TOOL_SOURCE_BUILTIN,
        "http": pb.TOOL_SOURCE_BUILTIN,
        "search": pb.TOOL_SOURCE_CONFIG,
        "test.exploding": pb.TOOL_SOURCE_ENTRY_POINT,
        "test.refusing": pb.TOOL_SOURCE_ENTRY_POINT,
        "testmcp.reverse": pb.TOOL_SOURCE_MCP,
    }
    assert {name: tools[name].source for name in expected_sources} == expected_sources
    # The tools file's overrides are what callers see.
    assert tools["calculator"].timeout_seconds == 2
    assert tools["emulated.chatbot"].max_concurrency == 1
    calculator_schema = json.loads(tools["calculator"].arguments_schema_json)
    assert calculator_schema["required"] == ["expression"]
    assert all(tool.description for tool in listed.tools)


@pytest.mark.parametrize(
    ("name", "arguments", "code", "reason"),
    [
        ("no.such.tool", "{}", common_pb2.TOOL_ERROR_CODE_UNKNOWN_TOOL, "no tool is named"),
        ("", "{}", INVALID, "the call names no tool"),
        ("calculator", "{not json", INVALID, "not valid JSON"),
        ("calculator", "[]", INVALID, "must be a JSON object"),
        ("calculator", "{}", INVALID, "'expression' is a required property"),
        ("calculator", json.dumps({"expression": "1" * 70_000}), INVALID, "the limit is 65536"),
    ],
)
async def test_bad_calls_are_answered_with_readable_errors(
    tool_runner: RunningToolRunner, name: str, arguments: str, code: int, reason: str
) -> None:
    result = await tool_runner.execute(name, arguments)
    assert (result.call_id, result.output) == ("call-1", "")
    assert result.error.code == code
    assert reason in result.error.message


async def test_a_negative_timeout_is_an_invalid_call(tool_runner: RunningToolRunner) -> None:
    result = await tool_runner.execute("calculator", {"expression": "1"}, timeout_seconds=-1)
    assert result.error.code == INVALID


async def test_a_tool_that_raises_is_a_failure_without_its_internals(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("test.exploding")
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_TOOL_FAILED
    assert "failed unexpectedly (RuntimeError)" in result.error.message
    assert "secret" not in result.error.message
    logged = [r for r in tool_runner.process.records() if r.get("tool") == "test.exploding"]
    assert any("secret detail" in r.get("exc", "") for r in logged)


async def test_a_tools_own_failure_message_reaches_the_model(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("test.refusing")
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_TOOL_FAILED
    assert result.error.message == "the account is locked; ask the user to unlock it"


async def test_a_full_concurrency_limit_answers_busy_and_frees_when_the_caller_leaves(
    tool_runner: RunningToolRunner,
) -> None:
    in_flight = 'lamps_tool_calls_in_flight{tool="emulated.chatbot"}'
    # Concurrency 1 (tools file); 3000 s at the runner's time scale is 30 s: it outlasts the test.
    first = asyncio.ensure_future(
        tool_runner.execute("emulated.chatbot", {"duration_seconds": 3000})
    )
    await until(lambda: sample(tool_runner.process, in_flight) == 1)
    second = await tool_runner.execute("emulated.chatbot", {"duration_seconds": 0})
    assert second.error.code == common_pb2.TOOL_ERROR_CODE_BUSY
    assert "all 1 of its slots are in use" in second.error.message

    first.cancel()  # the caller hangs up: the call is cancelled and its slot comes back
    await until(lambda: sample(tool_runner.process, in_flight) == 0)
    third = await tool_runner.execute("emulated.chatbot", {"duration_seconds": 0})
    assert third.error.code == OK


async def test_metrics_count_calls_errors_and_durations_per_tool(
    tool_runner: RunningToolRunner,
) -> None:
    await tool_runner.execute("calculator", {"expression": "2 + 2"})
    await tool_runner.execute("calculator", {"expression": "1 / 0"})
    await tool_runner.execute("nothing-by-this-name")
    metrics = await asyncio.to_thread(scrape, tool_runner.process)
    assert re.search(r'lamps_tool_calls_total\{outcome="ok",tool="calculator"\} [1-9]', metrics)
    assert re.search(
        r'lamps_tool_errors_total\{code="tool_failed",tool="calculator"\} [1-9]', metrics
    )
    assert 'lamps_tool_calls_total{outcome="unknown_tool",tool="(unknown)"}' in metrics
    assert "nothing-by-this-name" not in metrics
    assert 'lamps_tool_call_duration_seconds_bucket{le="0.0001",tool="calculator"}' in metrics


async def test_without_a_tools_file_only_the_built_ins_serve_and_http_is_off(
    tmp_path: Path,
) -> None:
    process = start_tool_runner(tmp_path / "log")
    try:
        process.wait_ready()
        async with aio.insecure_channel(process.target) as channel:
            stub = pb_grpc.ToolRunnerServiceStub(channel)
            listed = await stub.ListTools(pb.ListToolsRequest(), timeout=10)
            call = common_pb2.ToolCall(name="http", arguments_json='{"url": "https://a.com/"}')
            response = await stub.Execute(pb.ExecuteRequest(call=call), timeout=10)
    finally:
        assert process.terminate() == 0
    assert {tool.source for tool in listed.tools} == {pb.TOOL_SOURCE_BUILTIN}
    assert "http" not in {tool.name for tool in listed.tools}
    assert response.result.error.code == common_pb2.TOOL_ERROR_CODE_UNKNOWN_TOOL


async def test_a_wrong_tools_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text("mcp_servers:\n  - name: files\n    comand: mcp-files\n")
    process = start_tool_runner(tmp_path / "log", "--tools-file", str(tools_file))
    assert await asyncio.to_thread(process.proc.wait, 30) == 1
    errors = [r["msg"] for r in process.records() if r["level"] == "ERROR"]
    assert any(f"cannot start: {tools_file}: at mcp_servers/0" in m for m in errors), errors
    assert "Traceback" not in process.log_path.read_text()
