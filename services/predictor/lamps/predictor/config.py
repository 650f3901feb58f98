"""The predictor's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lamps.common.config import ConfigError, ServerConfig, flag_name, option
from lamps.predictor.backbone import Device
from lamps.predictor.durations import DEFAULT_MAX_WEIGHT, DEFAULT_SEED_WEIGHT


@dataclass(frozen=True)
class PredictorConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps predictor serve`."""

    port: int = option(50053, "gRPC port of the Predictor service; 0 picks a free one")
    metrics_port: int = option(9403, "Prometheus HTTP port (/metrics); 0 picks a free one")
    model: Path | None = option(
        None,
        "model file written by `lamps predictor train`; without one the service answers with "
        "call durations only (from_model=false) and logs a warning",
    )
    backbone: str | None = option(
        None,
        "backbone to load instead of the one the model file names: a hub id in the local cache, "
        "a directory of weights or a .gguf file (it must give features of the same width)",
    )
    device: Device = option(Device.AUTO, "where the backbone runs; auto picks CUDA when present")
    batch_window_ms: float = option(
        5.0, "how long the first waiting prompt waits for others to share its forward pass"
    )
    max_batch: int = option(32, "most prompts in one forward pass")
    max_prompt_chars: int = option(
        100_000,
        "longest prompt accepted, in characters; longer ones are refused with INVALID_ARGUMENT "
        "(accepted prompts are cut to the model's token limit, keeping their end)",
    )
    max_inputs: int = option(1024, "most prompts in one Predict call")
    max_outcomes: int = option(4096, "most outcomes in one ReportOutcome call")
    redis_url: str | None = option(
        None,
        "Redis holding the per-tool call-duration statistics (redis://host:6379/0); without "
        "one they live in this process and restart from the published priors",
        secret=True,
    )
    duration_seed_weight: float = option(
        DEFAULT_SEED_WEIGHT, "how many calls the published per-tool duration priors count as"
    )
    duration_max_weight: float = option(
        DEFAULT_MAX_WEIGHT,
        "duration statistics become a moving average over about this many recent calls",
    )
    duration_refresh_seconds: float = option(
        10.0, "how often to re-read duration statistics from Redis that other replicas updated"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = (
            "max_batch",
            "max_prompt_chars",
            "max_inputs",
            "max_outcomes",
            "duration_refresh_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{flag_name(name)} must be positive")
        if self.batch_window_ms < 0 or self.duration_seed_weight < 0:
            raise ConfigError("--batch-window-ms and --duration-seed-weight must not be negative")
        if self.duration_max_weight < 1:
            raise ConfigError("--duration-max-weight must be at least 1")
