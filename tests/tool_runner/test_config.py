"""The tool runner's options: read from flags and variables, refused with a reason when unusable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lamps.common.config import ConfigError, load
from lamps.tool_runner.config import ToolRunnerConfig


def test_options_come_from_the_environment(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text("")
    config = load(
        ToolRunnerConfig,
        environ={
            "LAMPS_TOOLS_FILE": str(tools_file),
            "LAMPS_SEED": "42",
            "LAMPS_TIME_SCALE": "0.1",
            "LAMPS_BUSY_WAIT_SECONDS": "0.5",
        },
    )
    assert (config.tools_file, config.seed, config.time_scale, config.busy_wait_seconds) == (
        tools_file,
        42,
        0.1,
        0.5,
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"LAMPS_TOOLS_FILE": "/no/such/tools.yaml"},
            "--tools-file=/no/such/tools.yaml: no such file",
        ),
        ({"LAMPS_TIME_SCALE": "-1"}, "--time-scale=-1.0 must be a number >= 0"),
        ({"LAMPS_TIME_SCALE": "inf"}, "--time-scale=inf must be a number >= 0"),
        ({"LAMPS_BUSY_WAIT_SECONDS": "-0.1"}, "--busy-wait-seconds=-0.1 must be a number >= 0"),
        ({"LAMPS_MAX_ARGUMENTS_BYTES": "0"}, "--max-arguments-bytes must be at least 1"),
        ({"LAMPS_MAX_OUTPUT_CHARS": "0"}, "--max-output-chars must be at least 1"),
        ({"LAMPS_SEED": "one"}, "LAMPS_SEED='one' is not an integer"),
    ],
)
def test_unusable_values_are_refused_with_the_option_named(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(ToolRunnerConfig, environ=environ)
