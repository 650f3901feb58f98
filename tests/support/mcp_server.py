"""A small MCP server for the tool runner's tests: `python -m tests.support.mcp_server` speaks
stdio; with `--http PORT` it serves streamable HTTP on 127.0.0.1:PORT at /mcp.

Its tools cover what a client meets: a plain answer, structured arguments, a tool that fails
(reported as an error result), and one that kills the server (a connection that drops).
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("lamps-test-tools")


@server.tool()
def reverse(text: str) -> str:
    """Reverses the text."""
    return text[::-1]


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails, saying why (as an error result the model reads)."""
    raise ToolError(reason)


@server.tool()
def exit_server() -> str:
    """Ends the server process at once, as a crash would."""
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
