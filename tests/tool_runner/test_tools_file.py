"""The tools file: YAML or JSON, checked against its schema, errors naming the place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lamps.tool_runner.registry import ToolOverride
from lamps.tool_runner.tools_file import ToolsFileError, load_tools_file
from tests.support.processes import REPO_ROOT

EXAMPLE_YAML = """\
tools:
  calculator: {timeout_seconds: 2, max_concurrency: 128}
  emulated.chatbot: {enabled: false}
emulated:
  - name: search
    duration_mean_seconds: 0.5
    duration_std_seconds: 0.1
    output_tokens: 40
http:
  allow: [api.example.com, "https://docs.example.org/v1/"]
  allow_private: [10.1.0.0/16]
  max_response_bytes: 65536
mcp_servers:
  - name: files
    command: mcp-files
    args: [--root, /data]
    env: {LOG_LEVEL: info}
  - name: search
    url: https://mcp.example.com/mcp
    headers: {authorization: Bearer abc}
    required: false
    prefix: ""
"""


def write(tmp_path: Path, text: str, name: str = "tools.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_full_yaml_file_is_read(tmp_path: Path) -> None:
    loaded = load_tools_file(write(tmp_path, EXAMPLE_YAML))
    assert loaded.overrides == {"calculator": ToolOverride(timeout_seconds=2, max_concurrency=128)}
    assert loaded.disabled == {"emulated.chatbot"}
    (search,) = loaded.emulated
    assert (search.name, search.output_tokens, search.description) == (
        "search",
        40,
        "An emulated tool",
    )
    assert loaded.http is not None
    assert loaded.http.allow == ("api.example.com", "https://docs.example.org/v1/")
    assert loaded.http.max_response_bytes == 65536
    files, remote = loaded.mcp_servers
    assert (files.command, files.args, dict(files.env)) == (
        "mcp-files",
        ("--root", "/data"),
        {"LOG_LEVEL": "info"},
    )
    assert (files.tool_prefix, files.required) == ("files.", True)
    assert (remote.url, remote.tool_prefix, remote.required) == (
        "https://mcp.example.com/mcp",
        "",
        False,
    )


def test_json_is_read_by_its_suffix_and_an_empty_file_changes_nothing(tmp_path: Path) -> None:
    document = {"tools": {"calculator": {"max_concurrency": 3}}}
    loaded = load_tools_file(write(tmp_path, json.dumps(document), "tools.json"))
    assert loaded.overrides["calculator"].max_concurrency == 3
    empty = load_tools_file(write(tmp_path, ""))
    assert (empty.overrides, empty.http, empty.mcp_servers) == ({}, None, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcp_servers: [{name: a, comand: x}]", "at mcp_servers/0"),
        ("tols: {}", "at the top level: Additional properties are not allowed ('tols'"),
        ("tools: {calculator: {timeout_seconds: 0}}", "at tools/calculator/timeout_seconds"),
        ("mcp_servers: [{name: a, command: x, url: 'http://b'}]", "at mcp_servers/0"),
        ("http: {allow: []}", "at http/allow"),
        ("http: {allow: ['a.com/path']}", "allowlist entry 'a.com/path'"),
        ("http: {allow: [a.com], allow_private: [nope]}", "http.allow_private"),
        ("emulated: [{name: s, duration_mean_seconds: 1}]", "'duration_std_seconds' is a required"),
        ("[1, 2]", "must hold a mapping at the top level"),
        ("tools: {a: [", "is not valid YAML"),
    ],
)
def test_mistakes_are_errors_that_name_the_file_and_place(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ToolsFileError, match=re.escape(message)) as caught:
        load_tools_file(path)
    assert str(path) in str(caught.value)


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ToolsFileError, match="cannot read the tools file"):
        load_tools_file(tmp_path / "missing.yaml")


def test_the_readmes_example_is_a_valid_tools_file(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    example = readme.split("### The tools file", 1)[1].split("```yaml\n", 1)[1].split("```")[0]
    loaded = load_tools_file(write(tmp_path, example))
    assert [server.name for server in loaded.mcp_servers] == ["files", "search"]
    assert "authorization" not in repr(loaded.mcp_servers)
