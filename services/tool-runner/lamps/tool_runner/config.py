"""The tool runner's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lamps.common.config import ConfigError, ServerConfig, flag_name, option


@dataclass(frozen=True)
class ToolRunnerConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps tool-runner serve`."""

    port: int = option(50054, "gRPC port of the ToolRunner service; 0 picks a free one")
    metrics_port: int = option(9404, "Prometheus HTTP port (/metrics); 0 picks a free one")
    tools_file: Path | None = option(
        None,
        "JSON or YAML file: per-tool timeouts and concurrency, declared emulated tools, the HTTP "
        "tool's allowlist, MCP servers (README: Tool runner)",
    )
    seed: int = option(0, "seed of the emulated tools' duration draws; one seed, one sequence")
    time_scale: float = option(
        1.0,
        "emulated tools sleep their duration times this: 0.1 replays a benchmark 10x faster, "
        "0 does not sleep",
    )
    busy_wait_seconds: float = option(
        0.0,
        "when a tool's concurrency limit is full, wait this long for a slot before answering "
        "BUSY; 0 answers at once",
    )
    max_arguments_bytes: int = option(65536, "largest arguments_json accepted, in bytes")
    max_output_chars: int = option(
        65536, "tool output beyond this many characters is cut, with a note saying so"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tools_file is not None and not self.tools_file.is_file():
            raise ConfigError(f"--tools-file={self.tools_file}: no such file")
        for name in ("time_scale", "busy_wait_seconds"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{flag_name(name)}={value} must be a number >= 0")
        for name in ("max_arguments_bytes", "max_output_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)} must be at least 1")
