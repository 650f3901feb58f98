"""The tool interface and the registry that runs calls safely.

Every call goes through `ToolRegistry.execute`, which never raises (cancellation aside): it parses
and validates the arguments against the tool's JSON schema, takes a slot of the tool's concurrency
limit, runs the tool under the smaller of the caller's and the tool's timeout, and turns whatever
happens into a `ToolOutcome` whose error the model can read.

A full concurrency limit answers BUSY after at most `CallLimits.busy_wait_seconds` (0 by default:
at once). The scheduler that calls us owns the retry policy and knows the request's deadline; a
hidden queue here would only hide load from the autoscaler, which scales on calls in flight.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators
from jsonschema.protocols import Validator

from lamps.common.text import shorten
from lamps.tool_runner import metrics
from lamps.tool_runner.errors import (
    InvalidArguments,
    ToolBusy,
    ToolErrorCode,
    ToolFailure,
    ToolTimeout,
    UnknownTool,
)

log = logging.getLogger("lamps.tool_runner")

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_CONCURRENCY = 16
# Names travel in prompts and metric labels: keep them short and plain.
# A caller's request id is cut to this in logs.
MAX_LOGGED_ID_CHARS = 128
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class ToolSource(enum.Enum):
    """Where a tool comes from; mirrors `lamps.v1.ToolSource`."""

    BUILTIN = "builtin"
    ENTRY_POINT = "entry_point"
    CONFIG = "config"
    MCP = "mcp"


@dataclass(frozen=True)
class ToolSpec:
    """What callers see of a tool, and the limits the registry enforces on its calls."""

    name: str
    description: str
    # JSON schema of the arguments object; the registry validates every call against it.
    arguments_schema: Mapping[str, Any]
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def __post_init__(self) -> None:
        if not TOOL_NAME_PATTERN.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} must be 1-128 letters, digits, '_', '.' or '-'"
            )
        if not (self.timeout_seconds > 0 and math.isfinite(self.timeout_seconds)):
            raise ValueError(f"tool {self.name!r}: timeout_seconds must be a positive number")
        if self.max_concurrency < 1:
            raise ValueError(f"tool {self.name!r}: max_concurrency must be at least 1")


@dataclass(frozen=True)
class ToolOverride:
    """Limits the operator sets for one tool in the tools file, over the tool's own."""

    timeout_seconds: float | None = None
    max_concurrency: int | None = None

    def apply(self, spec: ToolSpec) -> ToolSpec:
        return replace(
            spec,
            timeout_seconds=self.timeout_seconds or spec.timeout_seconds,
            max_concurrency=self.max_concurrency or spec.max_concurrency,
        )


class Tool(abc.ABC):
    """One tool: the built-ins, a package's `lamps.tools` entry points and MCP-served tools.

    `call` must not block the event loop (use `asyncio.to_thread` for blocking work) and must let
    cancellation through: that is how timeouts and callers who hang up stop it.
    """

    @property
    @abc.abstractmethod
    def spec(self) -> ToolSpec:
        """Name, description, argument schema and default limits."""

    @abc.abstractmethod
    async def call(self, arguments: dict[str, Any]) -> str:
        """Run once with arguments that already match `spec.arguments_schema`; return the text.

        Raise `ToolFailure` (or a subclass) with a sentence the model can act on.
        """

    async def aclose(self) -> None:  # noqa: B027 -- most tools hold nothing to release
        """Release what the tool holds (connections); called once at shutdown."""


@dataclass(frozen=True)
class CallLimits:
    """Limits on every call, whatever the tool."""

    max_arguments_bytes: int = 64 * 1024
    max_output_chars: int = 64 * 1024
    busy_wait_seconds: float = 0.0


@dataclass(frozen=True)
class ToolOutcome:
    """What a call produced: text, or an error code with a message the model can read."""

    tool: str
    output: str
    duration_seconds: float
    error: ToolErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RegisteredTool:
    """A tool as the registry holds it: its effective spec (overrides applied) and source."""

    spec: ToolSpec
    source: ToolSource


@dataclass
class _Entry:
    tool: Tool
    info: RegisteredTool
    validator: Validator
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.info.spec.max_concurrency)


class ToolRegistry:
    """The tools this runner serves, by name, and the one safe way to call them."""

    def __init__(self, limits: CallLimits | None = None) -> None:
        self.limits = limits or CallLimits()
        self._entries: dict[str, _Entry] = {}

    def register(
        self, tool: Tool, source: ToolSource, override: ToolOverride | None = None
    ) -> RegisteredTool:
        """Add a tool; a second tool of the same name or an invalid schema is a ValueError."""
        spec = override.apply(tool.spec) if override else tool.spec
        if spec.name in self._entries:
            raise ValueError(f"two tools are named {spec.name!r}; rename or disable one")
        validator_class = validators.validator_for(spec.arguments_schema)
        try:
            validator_class.check_schema(dict(spec.arguments_schema))
        except schema_errors.SchemaError as exc:
            raise ValueError(
                f"tool {spec.name!r} has an invalid arguments schema: {exc.message}"
            ) from None
        info = RegisteredTool(spec=spec, source=source)
        self._entries[spec.name] = _Entry(tool, info, validator_class(spec.arguments_schema))
        return info

    async def aclose(self) -> None:
        """Close every tool, logging (not raising) what fails, so one cannot block the others."""
        for entry in self._entries.values():
            try:
                await entry.tool.aclose()
            except Exception:
                log.exception("closing tool %r failed", entry.info.spec.name)

    def get(self, name: str) -> RegisteredTool | None:
        entry = self._entries.get(name)
        return entry.info if entry else None

    def tools(self) -> list[RegisteredTool]:
        """Every registered tool, by name."""
        return [self._entries[name].info for name in sorted(self._entries)]

    async def execute(
        self,
        name: str,
        arguments_json: str,
        *,
        timeout_seconds: float = 0.0,
        request_id: str = "",
    ) -> ToolOutcome:
        """Run one call; every failure comes back as an outcome, never as an exception.

        `timeout_seconds` > 0 bounds the call below the tool's own timeout.
        """
        started = time.monotonic()
        entry = self._entries.get(name)
        label = name if entry else metrics.UNKNOWN_TOOL_LABEL
        try:
            output = await self._run(entry, name, arguments_json, timeout_seconds)
            outcome = ToolOutcome(name, output, time.monotonic() - started)
        except ToolFailure as failure:
            outcome = ToolOutcome(
                name, "", time.monotonic() - started, failure.code, failure.message
            )
        _record(label, outcome, request_id)
        return outcome

    async def _run(
        self, entry: _Entry | None, name: str, arguments_json: str, timeout_seconds: float
    ) -> str:
        if entry is None:
            raise _unknown_tool(name, self._names())
        if not (timeout_seconds >= 0 and math.isfinite(timeout_seconds)):
            raise InvalidArguments("timeout_seconds must be 0 (the tool's own) or positive")
        arguments = parse_arguments(arguments_json, self.limits.max_arguments_bytes)
        _validate(entry, arguments)
        timeout = _effective_timeout(entry.info.spec.timeout_seconds, timeout_seconds)
        started = time.monotonic()
        await self._acquire(entry, timeout)
        try:
            remaining = timeout - (time.monotonic() - started)
            output = await _call_with_timeout(entry, arguments, remaining, timeout)
        finally:
            entry.slots.release()
        return _truncate(output, self.limits.max_output_chars)

    def _names(self, shown: int = 20) -> str:
        names = sorted(self._entries)
        return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "") or "none"

    async def _acquire(self, entry: _Entry, budget: float) -> None:
        """Take a concurrency slot, waiting at most the busy wait and never past `budget`."""
        spec = entry.info.spec
        busy = ToolBusy(
            f"tool {spec.name!r} is busy: all {spec.max_concurrency} of its slots are in use; "
            "try again shortly"
        )
        wait = min(self.limits.busy_wait_seconds, budget)
        if entry.slots.locked() and wait <= 0:
            raise busy
        try:
            async with asyncio.timeout(wait if wait > 0 else None):
                await entry.slots.acquire()
        except TimeoutError:
            raise busy from None


async def _call_with_timeout(
    entry: _Entry, arguments: dict[str, Any], remaining: float, budget: float
) -> str:
    name = entry.info.spec.name
    metrics.TOOL_CALLS_IN_FLIGHT.labels(name).inc()
    try:
        async with asyncio.timeout(max(remaining, 0.0)) as scope:
            # Typed as object: plugins are not always type-checked.
            output: object = await entry.tool.call(arguments)
    except TimeoutError as exc:
        if scope.expired():
            raise ToolTimeout(f"tool {name!r} did not answer within {budget:g} s") from None
        log.exception("tool %r raised", name, extra={"tool": name})
        raise _unexpected(name, exc) from None
    except ToolFailure:
        raise
    except Exception as exc:
        log.exception("tool %r raised", name, extra={"tool": name})
        raise _unexpected(name, exc) from None
    finally:
        metrics.TOOL_CALLS_IN_FLIGHT.labels(name).dec()
    if not isinstance(output, str):
        log.error("tool %r returned %s, not text", name, type(output).__name__)
        raise _unexpected(name)
    return output


def parse_arguments(text: str, max_bytes: int) -> dict[str, Any]:
    """The arguments object of a call; "" means no arguments."""
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidArguments(f"the arguments are {size} bytes; the limit is {max_bytes}")
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidArguments(f"the arguments are not valid JSON: {reason}") from None
    if not isinstance(value, dict):
        raise InvalidArguments(f"the arguments must be a JSON object, not {type(value).__name__}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(entry: _Entry, arguments: dict[str, Any]) -> None:
    try:
        error = schema_errors.best_match(entry.validator.iter_errors(arguments))
    except RecursionError:
        raise InvalidArguments("the arguments are nested too deeply") from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        at = f" at '{where}'" if where else ""
        raise InvalidArguments(
            f"the arguments do not match the schema of {entry.info.spec.name!r}{at}: "
            f"{error.message}"
        )


def _effective_timeout(tool_timeout: float, requested: float) -> float:
    return min(tool_timeout, requested) if requested > 0 else tool_timeout


def _truncate(output: str, limit: int) -> str:
    if len(output) <= limit:
        return output
    return output[:limit] + f"\n[output truncated: {len(output) - limit} more characters]"


def _unknown_tool(name: str, known: str) -> ToolFailure:
    if not name:
        return InvalidArguments(f"the call names no tool; available tools: {known}")
    return UnknownTool(f"no tool is named {shorten(name)!r}; available tools: {known}")


def _unexpected(name: str, exc: Exception | None = None) -> ToolFailure:
    kind = f" ({type(exc).__name__})" if exc is not None else ""
    return ToolFailure(f"tool {name!r} failed unexpectedly{kind}; the error has been logged")


def _record(label: str, outcome: ToolOutcome, request_id: str) -> None:
    code = outcome.error.value if outcome.error else metrics.OK_OUTCOME
    metrics.TOOL_CALLS.labels(label, code).inc()
    metrics.TOOL_CALL_SECONDS.labels(label).observe(outcome.duration_seconds)
    if outcome.error is not None:
        metrics.TOOL_ERRORS.labels(label, code).inc()
        log.info(
            "tool call failed: %s",
            outcome.message,
            extra={
                "tool": label,
                "code": code,
                "tool_request_id": shorten(request_id, MAX_LOGGED_ID_CHARS) or None,
            },
        )
