"""The tools file (`--tools-file`): per-tool limits, declared tools, the HTTP tool, MCP servers.

JSON or YAML (by the file's suffix), checked against `SCHEMA` before anything is built from it, so
a typo such as `comand:` is an error naming the file and the place, not a silently ignored key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from lamps.tool_runner.registry import DEFAULT_TIMEOUT_SECONDS, ToolOverride
from lamps.tool_runner.tools.emulated import EmulatedProfile
from lamps.tool_runner.tools.http import HttpSettings

_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_COUNT = {"type": "integer", "minimum": 1}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tools": {
            "type": "object",
            "description": "Per-tool settings by tool name, over the tool's own",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "timeout_seconds": _POSITIVE,
                    "max_concurrency": _COUNT,
                },
            },
        },
        "emulated": {
            "type": "array",
            "description": "Emulated tools declared here, beside the six built in",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "duration_mean_seconds", "duration_std_seconds"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "duration_mean_seconds": _POSITIVE,
                    "duration_std_seconds": {"type": "number", "minimum": 0},
                    "output_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "required": ["allow"],
            "properties": {
                "allow": {**_STRINGS, "minItems": 1},
                "allow_private": _STRINGS,
                "max_response_bytes": _COUNT,
                "timeout_seconds": _POSITIVE,
                "max_redirects": {"type": "integer", "minimum": 0},
                "max_concurrency": _COUNT,
            },
        },
        "mcp_servers": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "oneOf": [{"required": ["command"]}, {"required": ["url"]}],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"},
                    "command": {"type": "string", "minLength": 1},
                    "args": _STRINGS,
                    "env": _STRING_MAP,
                    "cwd": {"type": "string"},
                    "url": {"type": "string", "pattern": "^https?://"},
                    "headers": _STRING_MAP,
                    "prefix": {"type": "string"},
                    "required": {"type": "boolean"},
                    "connect_timeout_seconds": _POSITIVE,
                    "timeout_seconds": _POSITIVE,
                    "max_concurrency": _COUNT,
                },
            },
        },
    },
}


class ToolsFileError(ValueError):
    """The tools file cannot be read or does not describe a valid set of tools."""


@dataclass(frozen=True)
class McpServerSettings:
    """One entry of `mcp_servers`: how to reach the server, and the limits of its tools."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    # Kept out of repr: environment and headers often carry credentials.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Put before each of the server's tool names; None means "<name>.".
    prefix: str | None = None
    # False: a server that cannot be reached at start-up is skipped with a warning.
    required: bool = True
    connect_timeout_seconds: float = 30.0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: give exactly one of command and url")

    @property
    def tool_prefix(self) -> str:
        return f"{self.name}." if self.prefix is None else self.prefix

    @property
    def where(self) -> str:
        return self.url or " ".join([self.command or "", *self.args])


@dataclass(frozen=True)
class ToolsFile:
    """What the tools file asks for; the default (no file) changes nothing."""

    overrides: Mapping[str, ToolOverride] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    emulated: tuple[EmulatedProfile, ...] = ()
    http: HttpSettings | None = None
    mcp_servers: tuple[McpServerSettings, ...] = ()


def load_tools_file(path: Path) -> ToolsFile:
    """Read, check and convert the tools file; ToolsFileError says what is wrong and where."""
    document = _read(path)
    error = best_match(Draft202012Validator(SCHEMA).iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ToolsFileError(f"{path}: at {where}: {error.message}")
    try:
        return _convert(document)
    except ValueError as exc:
        raise ToolsFileError(f"{path}: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ToolsFileError(f"cannot read the tools file {path}: {exc.strerror}") from None
    try:
        document = json.loads(text) if _format(path) == "JSON" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ToolsFileError(f"{path} is not valid {_format(path)}: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ToolsFileError(f"{path} must hold a mapping at the top level")
    return document


def _format(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"


def _convert(document: Mapping[str, Any]) -> ToolsFile:
    tools: Mapping[str, Mapping[str, Any]] = document.get("tools", {})
    http = document.get("http")
    return ToolsFile(
        overrides={
            name: ToolOverride(
                timeout_seconds=entry.get("timeout_seconds"),
                max_concurrency=entry.get("max_concurrency"),
            )
            for name, entry in tools.items()
            if entry.get("enabled", True)
        },
        disabled=frozenset(name for name, entry in tools.items() if not entry.get("enabled", True)),
        emulated=tuple(
            EmulatedProfile(**{"description": "An emulated tool", **entry})
            for entry in document.get("emulated", ())
        ),
        http=_http(http) if http is not None else None,
        mcp_servers=tuple(_mcp_server(entry) for entry in document.get("mcp_servers", ())),
    )


def _http(section: Mapping[str, Any]) -> HttpSettings:
    return HttpSettings(
        **{
            **section,
            "allow": tuple(section["allow"]),
            "allow_private": tuple(section.get("allow_private", ())),
        }
    )


def _mcp_server(entry: Mapping[str, Any]) -> McpServerSettings:
    return McpServerSettings(**{**entry, "args": tuple(entry.get("args", ()))})
