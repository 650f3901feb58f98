"""The worker's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from lamps.common.config import ServerConfig, option


@dataclass(frozen=True)
class WorkerConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps worker serve`."""

    port: int = option(50052, "gRPC port of the worker's health and reflection; 0 picks one")
    metrics_port: int = option(9402, "Prometheus HTTP port (/metrics); 0 picks a free one")
