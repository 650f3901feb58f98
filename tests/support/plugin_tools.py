"""Tools installed through the `lamps.tools` entry point group in the tool runner's tests.

`install_plugins` writes a minimal distribution's metadata into a folder; a process with that
folder on PYTHONPATH sees the entry points as if a package had been installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lamps.tool_runner.errors import ToolFailure
from lamps.tool_runner.registry import Tool, ToolSpec

_ANY_OBJECT = {"type": "object"}


class ExplodingTool(Tool):
    """Raises an unexpected error whose message must not reach the model."""

    spec = ToolSpec("test.exploding", "Raises RuntimeError", _ANY_OBJECT)

    async def call(self, arguments: dict[str, Any]) -> str:
        raise RuntimeError("secret detail: /etc/lamps/token")


class RefusingTool(Tool):
    """Fails the way a tool should: with a sentence for the model."""

    spec = ToolSpec("test.refusing", "Raises ToolFailure", _ANY_OBJECT)

    async def call(self, arguments: dict[str, Any]) -> str:
        raise ToolFailure("the account is locked; ask the user to unlock it")


def make_tools() -> list[Tool]:
    """A factory entry point yielding several tools."""
    return [RefusingTool()]


ENTRY_POINTS = """\
[lamps.tools]
test.exploding = tests.support.plugin_tools:ExplodingTool
test.refusing = tests.support.plugin_tools:make_tools
"""


def install_plugins(site: Path) -> Path:
    """Write the metadata of a distribution declaring ENTRY_POINTS under `site`."""
    dist_info = site / "lamps_test_plugins-0.0.0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lamps-test-plugins\nVersion: 0.0.0\n"
    )
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site
