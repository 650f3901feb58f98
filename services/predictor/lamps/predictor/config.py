"""The predictor's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from lamps.common.config import ServerConfig, option


@dataclass(frozen=True)
class PredictorConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps predictor serve`."""

    port: int = option(50053, "gRPC port of the Predictor service; 0 picks a free one")
    metrics_port: int = option(9403, "Prometheus HTTP port (/metrics); 0 picks a free one")
