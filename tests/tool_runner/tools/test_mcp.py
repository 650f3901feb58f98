"""MCP-served tools: listed and called like built-ins, through a real MCP server over stdio."""

from __future__ import annotations

import asyncio
import json

import mcp_types
import pytest

from lamps.tool_runner.errors import ToolFailure
from lamps.tool_runner.tools.mcp import describe_error, result_text
from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from tests.tool_runner.conftest import RunningToolRunner

OK = common_pb2.TOOL_ERROR_CODE_UNSPECIFIED


async def test_an_mcp_servers_tools_are_listed_with_their_schema_and_source(
    tool_runner: RunningToolRunner,
) -> None:
    listed = await tool_runner.stub.ListTools(pb.ListToolsRequest(), timeout=10)
    tools = {tool.name: tool for tool in listed.tools if tool.source == pb.TOOL_SOURCE_MCP}
    assert set(tools) == {"testmcp.reverse", "testmcp.add", "testmcp.fail", "testmcp.exit_server"}
    reverse = tools["testmcp.reverse"]
    assert reverse.description == "Reverses the text."
    schema = json.loads(reverse.arguments_schema_json)
    assert schema["required"] == ["text"]
    assert schema["properties"]["text"]["type"] == "string"


async def test_an_mcp_tool_is_called_through_the_tool_runner(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("testmcp.reverse", {"text": "lamps"})
    assert (result.error.code, result.output) == (OK, "spmal")
    result = await tool_runner.execute("testmcp.add", {"a": 2, "b": 3})
    assert (result.error.code, result.output) == (OK, "5")


async def test_arguments_are_checked_against_the_servers_schema_before_the_call(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("testmcp.add", {"a": "two", "b": 3})
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
    assert "at 'a': 'two' is not of type 'integer'" in result.error.message


async def test_an_error_result_from_the_server_is_a_tool_failure(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("testmcp.fail", {"reason": "disk full"})
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_TOOL_FAILED
    assert result.error.message == "Error executing tool fail: disk full"


async def test_a_server_that_dies_is_unavailable_then_reconnected(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("testmcp.exit_server")
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_UNAVAILABLE
    assert "closed the connection; it is being reconnected" in result.error.message
    async with asyncio.timeout(30):
        while True:
            result = await tool_runner.execute("testmcp.reverse", {"text": "back"})
            if result.error.code == OK:
                break
            assert result.error.code == common_pb2.TOOL_ERROR_CODE_UNAVAILABLE
            await asyncio.sleep(0.2)
    assert result.output == "kcab"


def test_result_text_joins_text_names_other_content_and_raises_on_errors() -> None:
    image = mcp_types.ImageContent(data="AAAA", mime_type="image/png")
    result = mcp_types.CallToolResult(content=[mcp_types.TextContent(text="a"), image])
    assert result_text(result) == "a\n[image omitted]"
    structured = mcp_types.CallToolResult(content=[], structured_content={"n": 1})
    assert result_text(structured) == '{"n": 1}'
    failed = mcp_types.CallToolResult(content=[mcp_types.TextContent(text="no")], is_error=True)
    with pytest.raises(ToolFailure, match=r"^no$"):
        result_text(failed)


def test_errors_are_described_by_their_innermost_reason() -> None:
    nested = ExceptionGroup("task group", [ExceptionGroup("inner", [OSError("no such file")])])
    assert describe_error(nested) == "OSError: no such file"
