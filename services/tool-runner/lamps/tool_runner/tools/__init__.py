"""The built-in tools: `calculator`, the six `emulated.*` API types, and `http` (off unless
the tools file gives it an allowlist)."""

from __future__ import annotations

from lamps.tool_runner.registry import Tool
from lamps.tool_runner.tools.calculator import CalculatorTool
from lamps.tool_runner.tools.emulated import builtin_emulated_tools


def builtin_tools(*, seed: int, time_scale: float) -> list[Tool]:
    """The built-ins that need no configuration."""
    return [CalculatorTool(), *builtin_emulated_tools(seed=seed, time_scale=time_scale)]
