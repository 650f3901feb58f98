"""The scheduler's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from lamps.common.config import ServerConfig, option


@dataclass(frozen=True)
class SchedulerConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps scheduler serve`."""

    port: int = option(50051, "gRPC port of the Scheduler and WorkerGateway services; 0 picks one")
    metrics_port: int = option(9401, "Prometheus HTTP port (/metrics); 0 picks a free one")
    cluster_tokens: tuple[str, ...] = option(
        (),
        "bearer tokens workers must present on the WorkerGateway, comma-separated; "
        "none leaves it open",
        secret=True,
    )
