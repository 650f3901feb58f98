"""Start-up: which tools get registered from where, and what stops a start with a clear reason."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamps.common.server import ServerStartError
from lamps.tool_runner.catalog import open_catalog
from lamps.tool_runner.config import ToolRunnerConfig
from lamps.tool_runner.errors import ToolErrorCode
from lamps.tool_runner.registry import ToolRegistry, ToolSource
from tests.support.plugin_tools import install_plugins
from tests.support.processes import REPO_ROOT
from tests.tool_runner.conftest import mcp_server_entry

BUILTINS = {
    "calculator",
    "emulated.chatbot",
    "emulated.image_generation",
    "emulated.math",
    "emulated.qa",
    "emulated.text_to_speech",
    "emulated.virtual_environment",
}


def config_with(tmp_path: Path, document: dict[str, Any] | None = None) -> ToolRunnerConfig:
    if document is None:
        return ToolRunnerConfig()
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(document))
    return ToolRunnerConfig(tools_file=path)


async def sources(config: ToolRunnerConfig) -> dict[str, ToolSource]:
    registry = ToolRegistry()
    async with open_catalog(config, registry):
        return {tool.spec.name: tool.source for tool in registry.tools()}


async def test_without_a_tools_file_the_built_ins_are_registered_and_http_is_off(
    tmp_path: Path,
) -> None:
    assert await sources(config_with(tmp_path)) == dict.fromkeys(BUILTINS, ToolSource.BUILTIN)


async def test_the_tools_file_disables_overrides_declares_and_turns_http_on(
    tmp_path: Path,
) -> None:
    config = config_with(
        tmp_path,
        {
            "tools": {"emulated.math": {"enabled": False}, "calculator": {"max_concurrency": 2}},
            "emulated": [
                {"name": "lookup", "duration_mean_seconds": 1, "duration_std_seconds": 0.5}
            ],
            "http": {"allow": ["example.com"]},
        },
    )
    registry = ToolRegistry()
    async with open_catalog(config, registry):
        found = {tool.spec.name: tool.source for tool in registry.tools()}
        calculator = registry.get("calculator")
        assert calculator is not None
        assert calculator.spec.max_concurrency == 2
    assert "emulated.math" not in found
    assert (found["lookup"], found["http"]) == (ToolSource.CONFIG, ToolSource.BUILTIN)


async def test_entry_point_plugins_are_registered_unless_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(install_plugins(tmp_path / "site")))
    found = await sources(config_with(tmp_path))
    assert found["test.exploding"] is ToolSource.ENTRY_POINT
    assert found["test.refusing"] is ToolSource.ENTRY_POINT
    disabled = config_with(tmp_path, {"tools": {"test.exploding": {"enabled": False}}})
    assert "test.exploding" not in await sources(disabled)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.support.no_such_module:Tool", "failed to load: ModuleNotFoundError"),
        ("json:dumps", "failed to load: TypeError"),
        ("tests.support.plugin_tools:ENTRY_POINTS", "must name a lamps.tool_runner.registry.Tool"),
        ("builtins:list", "must name a lamps.tool_runner.registry.Tool"),
    ],
)
async def test_a_broken_plugin_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    site = install_plugins(tmp_path / "site")
    (site / "lamps_test_plugins-0.0.0.dist-info" / "entry_points.txt").write_text(
        f"[lamps.tools]\nbroken = {target}\n"
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ServerStartError, match="entry point 'broken'") as caught:
        await sources(config_with(tmp_path))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tools": {"calculater": {"timeout_seconds": 1}}}, "tools that do not exist: calculater"),
        (
            {
                "emulated": [
                    {"name": "calculator", "duration_mean_seconds": 1, "duration_std_seconds": 0}
                ]
            },
            "two tools are named 'calculator'",
        ),
        ({"tools": {"a": []}}, "at tools/a: [] is not of type 'object'"),
    ],
)
async def test_a_wrong_tools_file_stops_the_start(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ServerStartError) as caught:
        await sources(config_with(tmp_path, document))
    assert message in str(caught.value)


async def test_mcp_tools_are_registered_with_the_chosen_prefix(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        {
            "tools": {"exit_server": {"enabled": False}, "add": {"timeout_seconds": 3}},
            "mcp_servers": [mcp_server_entry(prefix="")],
        },
    )
    registry = ToolRegistry()
    async with open_catalog(config, registry):
        mcp_tools = {t.spec.name for t in registry.tools() if t.source is ToolSource.MCP}
        outcome = await registry.execute("reverse", '{"text": "abc"}')
        add = registry.get("add")
    assert mcp_tools == {"reverse", "add", "fail"}
    assert outcome.output == "cba"
    assert add is not None
    assert add.spec.timeout_seconds == 3
    # Closed with the catalogue: the connection is gone.
    after = await registry.execute("reverse", '{"text": "abc"}')
    assert after.error is ToolErrorCode.UNAVAILABLE


@pytest.fixture
def mcp_over_http() -> Iterator[str]:
    """tests/support/mcp_server.py serving streamable HTTP; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.mcp_server", "--http", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not listen in time"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)


async def test_an_mcp_server_over_streamable_http_is_registered_and_called(
    tmp_path: Path, mcp_over_http: str
) -> None:
    config = config_with(tmp_path, {"mcp_servers": [{"name": "web", "url": mcp_over_http}]})
    registry = ToolRegistry()
    async with open_catalog(config, registry):
        outcome = await registry.execute("web.add", '{"a": 40, "b": 2}')
        web = registry.get("web.reverse")
    assert outcome.output == "42"
    assert web is not None
    assert web.source is ToolSource.MCP


SILENT = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ({"command": "/no/such/mcp-server"}, "FileNotFoundError"),
        ({"command": sys.executable, "args": ["-c", "pass"]}, "Connection closed"),
        (
            {"command": SILENT[0], "args": SILENT[1:], "connect_timeout_seconds": 0.5},
            "no answer in time",
        ),
    ],
)
async def test_a_required_mcp_server_that_fails_stops_the_start(
    tmp_path: Path, server: dict[str, Any], reason: str
) -> None:
    config = config_with(tmp_path, {"mcp_servers": [{"name": "broken", **server}]})
    with pytest.raises(ServerStartError) as caught:
        await sources(config)
    message = str(caught.value)
    assert "MCP server 'broken'" in message
    assert reason in message
    assert "required: false" in message


async def test_an_optional_mcp_server_that_fails_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_with(
        tmp_path,
        {"mcp_servers": [{"name": "optional", "command": "/no/such/mcp", "required": False}]},
    )
    with caplog.at_level(logging.WARNING, logger="lamps.tool_runner"):
        found = await sources(config)
    assert set(found) == BUILTINS
    assert any("MCP server 'optional'" in record.getMessage() for record in caplog.records)
