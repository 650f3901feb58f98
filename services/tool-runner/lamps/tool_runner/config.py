"""The tool runner's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from lamps.common.config import ServerConfig, option


@dataclass(frozen=True)
class ToolRunnerConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps tool-runner serve`."""

    port: int = option(50054, "gRPC port of the ToolRunner service; 0 picks a free one")
    metrics_port: int = option(9404, "Prometheus HTTP port (/metrics); 0 picks a free one")
