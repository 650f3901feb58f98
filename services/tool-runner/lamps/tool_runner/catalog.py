"""Filling the registry at start-up: built-ins, `lamps.tools` entry points, the tools file, MCP.

Anything wrong here (an unreadable tools file, a plugin that fails to load, two tools with one name,
a required MCP server that does not answer, an override naming no tool) stops the start with a
`ServerStartError` saying what to fix, so a misconfigured runner never serves a partial catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import EntryPoint, entry_points

from lamps.common.server import ServerStartError
from lamps.tool_runner.config import ToolRunnerConfig
from lamps.tool_runner.registry import Tool, ToolRegistry, ToolSource
from lamps.tool_runner.tools import builtin_tools
from lamps.tool_runner.tools.emulated import EmulatedTool
from lamps.tool_runner.tools.http import HttpTool
from lamps.tool_runner.tools_file import (
    McpServerSettings,
    ToolsFile,
    ToolsFileError,
    load_tools_file,
)

log = logging.getLogger("lamps.tool_runner")

ENTRY_POINT_GROUP = "lamps.tools"


@asynccontextmanager
async def open_catalog(config: ToolRunnerConfig, registry: ToolRegistry) -> AsyncIterator[None]:
    """Register every tool, connect MCP servers; on exit close them all."""
    try:
        tools_file = load_tools_file(config.tools_file) if config.tools_file else ToolsFile()
    except ToolsFileError as exc:
        raise ServerStartError(str(exc)) from None
    async with AsyncExitStack() as stack:
        stack.push_async_callback(registry.aclose)
        _register(registry, tools_file, _configured_tools(config, tools_file))
        _register(registry, tools_file, _entry_point_tools(tools_file.disabled))
        for server in tools_file.mcp_servers:
            await _connect_mcp(registry, tools_file, server, stack)
        _check_overrides(registry, tools_file)
        log.info(
            "tools registered",
            extra={"tools": {t.spec.name: t.source.value for t in registry.tools()}},
        )
        yield


def _configured_tools(
    config: ToolRunnerConfig, tools_file: ToolsFile
) -> Iterable[tuple[Tool, ToolSource]]:
    for tool in builtin_tools(seed=config.seed, time_scale=config.time_scale):
        yield tool, ToolSource.BUILTIN
    for profile in tools_file.emulated:
        yield (
            EmulatedTool(profile, seed=config.seed, time_scale=config.time_scale),
            ToolSource.CONFIG,
        )
    if tools_file.http is not None:
        yield HttpTool(tools_file.http), ToolSource.BUILTIN


def _entry_point_tools(disabled: frozenset[str]) -> Iterable[tuple[Tool, ToolSource]]:
    """Tools of installed packages: each entry point names a Tool, or a factory of one or many."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in disabled:
            continue
        for tool in _load_entry_point(entry_point):
            yield tool, ToolSource.ENTRY_POINT


def _load_entry_point(entry_point: EntryPoint) -> list[Tool]:
    where = f"entry point {entry_point.name!r} ({entry_point.value}) of group {ENTRY_POINT_GROUP}"
    wrong = ServerStartError(
        f"{where} must name a lamps.tool_runner.registry.Tool, or a function returning one or a "
        "list of them"
    )
    try:
        loaded = entry_point.load()
        if not isinstance(loaded, Tool) and not callable(loaded):
            raise wrong
        made = loaded if isinstance(loaded, Tool) else loaded()
    except ServerStartError:
        raise
    except Exception as exc:
        raise ServerStartError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    tools = [made] if isinstance(made, Tool) else made if isinstance(made, list) else []
    if not tools or not all(isinstance(tool, Tool) for tool in tools):
        raise wrong
    return tools


def _register(
    registry: ToolRegistry, tools_file: ToolsFile, tools: Iterable[tuple[Tool, ToolSource]]
) -> None:
    for tool, source in tools:
        if tool.spec.name in tools_file.disabled:
            continue
        try:
            registry.register(tool, source, tools_file.overrides.get(tool.spec.name))
        except ValueError as exc:
            raise ServerStartError(str(exc)) from None


async def _connect_mcp(
    registry: ToolRegistry, tools_file: ToolsFile, server: McpServerSettings, stack: AsyncExitStack
) -> None:
    """Connect one MCP server and register its tools; see lamps.tool_runner.tools.mcp."""
    try:
        from lamps.tool_runner.tools import mcp
    except ImportError as exc:
        raise ServerStartError(
            f"the tools file configures MCP servers but {exc.name} is not installed: "
            "pip install 'lamps-serving[mcp]'"
        ) from None
    connection = mcp.McpConnection(server)
    try:
        listed = await connection.start()
    except Exception as exc:  # noqa: BLE001 -- whatever stops a server is reported, not raised
        reason = "no answer in time" if isinstance(exc, TimeoutError) else mcp.describe_error(exc)
        message = f"MCP server {server.name!r} ({server.where}) failed to start: {reason}"
        if server.required:
            raise ServerStartError(message + "; fix it, or mark it required: false") from None
        log.warning("%s; skipping its tools (required: false)", message)
        return
    stack.push_async_callback(connection.close)
    for remote in listed:
        try:
            tool = mcp.McpTool(connection, remote)
            if tool.spec.name not in tools_file.disabled:
                registry.register(tool, ToolSource.MCP, tools_file.overrides.get(tool.spec.name))
        except ValueError as exc:
            log.warning("MCP server %r: skipping a tool: %s", server.name, exc)


def _check_overrides(registry: ToolRegistry, tools_file: ToolsFile) -> None:
    unknown = sorted(name for name in tools_file.overrides if registry.get(name) is None)
    if unknown:
        raise ServerStartError(
            f"the tools file sets limits for tools that do not exist: {', '.join(unknown)}"
        )
