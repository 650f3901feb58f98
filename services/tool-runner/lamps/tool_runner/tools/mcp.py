"""Tools served by Model Context Protocol servers (the `mcp` package, 2.x).

Each configured server (a command spoken to over stdio, or a streamable-HTTP URL) gets a
connection owned by a task of its own. The MCP client keeps anyio task groups open for as long as
it is connected, and a task group must be left by the task that entered it; a dedicated task also
keeps a failing server from cancelling the tool runner's main task. When a call finds the
connection closed (a stdio server that exited), the call answers UNAVAILABLE and the task
reconnects with backoff; the tools listed at start-up stay registered meanwhile.

At start-up, a server that cannot be reached within its connect timeout stops the tool runner
unless the tools file marks it `required: false`, in which case it is skipped with a warning and
its tools are absent (calls to them answer UNKNOWN_TOOL): a runner that silently lacks tools it was
configured with would fail in ways much harder to see than a pod that does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp_types
import pydantic
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from lamps.tool_runner.errors import ToolFailure, ToolUnavailable
from lamps.tool_runner.registry import Tool, ToolSpec
from lamps.tool_runner.tools_file import McpServerSettings

log = logging.getLogger("lamps.tool_runner.mcp")

_RECONNECT_FIRST_DELAY_S = 0.5
_RECONNECT_MAX_DELAY_S = 30.0
_CLOSE_TIMEOUT_S = 5.0
# What a broken transport raises, besides MCPError(CONNECTION_CLOSED).
_CONNECTION_ERRORS = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    OSError,
    httpx2.TransportError,
)


class McpConnection:
    """A live connection to one MCP server, reconnected when it drops."""

    def __init__(self, settings: McpServerSettings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._ready: asyncio.Future[list[mcp_types.Tool]] | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> list[mcp_types.Tool]:
        """Connect and list the server's tools; raises on failure or after the connect timeout."""
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.settings.name}")
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                return await asyncio.shield(self._ready)
        except BaseException:
            # A server that never answered cannot be asked to close: stop connecting outright.
            self._closing.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._retrieve_failure()
            raise

    async def close(self) -> None:
        """Disconnect; the server process (stdio) is stopped by the client."""
        self._closing.set()
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            log.warning("MCP server %r did not close in time", self.settings.name)
        self._retrieve_failure()

    def _retrieve_failure(self) -> None:
        """Mark a failed first connection as seen: start() has already reported it."""
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        client = self._client
        if client is None:
            raise ToolUnavailable(
                f"MCP server {self.settings.name!r} is not connected; it is being reconnected, "
                "try again shortly"
            )
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                raise self._lost(exc) from None
            raise ToolFailure(f"MCP server {self.settings.name!r}: {exc.message}") from None
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        except pydantic.ValidationError:
            raise ToolFailure(
                f"MCP server {self.settings.name!r} sent a malformed result"
            ) from None

    def _lost(self, exc: BaseException) -> ToolUnavailable:
        if self._client is not None:
            log.warning("MCP server %r: connection lost (%s)", self.settings.name, exc)
            self._client = None
            self._wake.set()
        return ToolUnavailable(
            f"MCP server {self.settings.name!r} closed the connection; it is being reconnected, "
            "try again shortly"
        )

    async def _supervise(self) -> None:
        delay = _RECONNECT_FIRST_DELAY_S
        while not self._closing.is_set():
            try:
                await self._connect_once()
                delay = _RECONNECT_FIRST_DELAY_S
            except Exception as exc:  # noqa: BLE001 -- any failure of the server: retry, logged
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(exc)
                    return
                log.warning(
                    "MCP server %r: connection failed (%s); retrying in %g s",
                    self.settings.name,
                    describe_error(exc),
                    delay,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            delay = min(delay * 2, _RECONNECT_MAX_DELAY_S)

    async def _connect_once(self) -> None:
        """One connection's life: connect, publish, wait until lost or closing, disconnect."""
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(Client(await self._transport(stack)))
            tools = await _list_tools(client)
            self._wake.clear()
            if self._closing.is_set():
                return
            self._client = client
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(tools)
            else:
                log.info("MCP server %r: reconnected", self.settings.name)
            try:
                await self._wake.wait()
            finally:
                self._client = None

    async def _transport(self, stack: AsyncExitStack) -> Any:
        settings = self.settings
        if settings.command is not None:
            return StdioServerParameters(
                command=settings.command,
                args=list(settings.args),
                env=dict(settings.env) or None,
                cwd=settings.cwd,
            )
        assert settings.url is not None
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=dict(settings.headers), timeout=httpx2.Timeout(30, read=300))
        )
        return streamable_http_client(settings.url, http_client=http)


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools


class McpTool(Tool):
    """One tool of an MCP server, called through its connection."""

    def __init__(self, connection: McpConnection, tool: mcp_types.Tool) -> None:
        settings = connection.settings
        self._connection = connection
        self._remote_name = tool.name
        self._spec = ToolSpec(
            name=settings.tool_prefix + tool.name,
            description=tool.description or f"{tool.name} (MCP server {settings.name})",
            arguments_schema=tool.input_schema,
            timeout_seconds=settings.timeout_seconds,
            max_concurrency=settings.max_concurrency,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        return result_text(await self._connection.call(self._remote_name, arguments))


def describe_error(exc: BaseException) -> str:
    """The innermost reason of an error, out of the task groups the MCP client wraps it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def result_text(result: mcp_types.CallToolResult) -> str:
    """The text the model reads: text blocks in order; other content named, not inlined."""
    parts = [
        block.text if isinstance(block, mcp_types.TextContent) else f"[{block.type} omitted]"
        for block in result.content
    ]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    text = "\n".join(parts)
    if result.is_error:
        raise ToolFailure(text or "the MCP tool reported an error")
    return text
