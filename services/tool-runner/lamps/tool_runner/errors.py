"""How a tool call fails: the codes the model reads, and the exceptions tools raise to report them.

A tool raises `ToolFailure` (or a subclass) with a sentence the model can act on; the registry turns
it into a `ToolResult` error. Any other exception is a bug in the tool: the registry logs it and the
model only learns that the tool failed, so internals such as paths or secrets never reach a prompt.
"""

from __future__ import annotations

import enum


class ToolErrorCode(enum.Enum):
    """What kind of failure a call was; mirrors `lamps.v1.ToolErrorCode` without its prefix."""

    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    TIMEOUT = "timeout"
    TOOL_FAILED = "tool_failed"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


class ToolFailure(Exception):  # noqa: N818 -- the model reads it as a result, not a program error
    """Raised by a tool for a failure whose message the model should read."""

    code = ToolErrorCode.TOOL_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArguments(ToolFailure):
    """The arguments passed the schema but the tool cannot use them (a malformed expression)."""

    code = ToolErrorCode.INVALID_ARGUMENTS


class ToolUnavailable(ToolFailure):
    """What serves the tool cannot be reached (an MCP server that has gone away)."""

    code = ToolErrorCode.UNAVAILABLE


class UnknownTool(ToolFailure):
    """No tool of the called name is registered."""

    code = ToolErrorCode.UNKNOWN_TOOL


class ToolTimeout(ToolFailure):
    """The call ran past its timeout and was cancelled."""

    code = ToolErrorCode.TIMEOUT


class ToolBusy(ToolFailure):
    """Every concurrency slot of the tool was taken."""

    code = ToolErrorCode.BUSY
