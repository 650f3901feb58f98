"""The worker's configuration: its engine, and how its agent reaches the scheduler."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path

from lamps.common.channel import ClientTls, target_error
from lamps.common.config import ConfigError, ServerConfig, flag_name, option

ENGINES = ("sim", "vllm")


def _hostname() -> str:
    # In Kubernetes the pod name: stable for the pod's life and unique among running pods.
    return socket.gethostname()


@dataclass(frozen=True)
class WorkerConfig(ServerConfig):
    """Flags and `LAMPS_*` variables of `lamps worker serve`."""

    port: int = option(50052, "gRPC port of the worker's health and reflection; 0 picks one")
    metrics_port: int = option(9402, "Prometheus HTTP port (/metrics); 0 picks a free one")

    # The engine ---------------------------------------------------------------------------------
    engine: str = option("sim", "inference engine: sim (the paged-KV model, no GPU) or vllm")
    model: str = option(
        "sim", "model served: a label for sim; a local path or hub id for vllm (as clients name it)"
    )
    profile: str = option(
        "gptj-6b-a100",
        "GPU cost profile (gptj-6b-a100, vicuna-13b-a100x2): the sim engine's speed and memory, "
        "and what the scheduler's policies reason with",
    )
    time_scale: float = option(
        1.0, "sim: run this many times faster than the profile's GPU (10 runs 10x faster)"
    )
    kv_cache_bytes: int = option(
        0, "bytes of KV cache; 0 takes the engine's default (sim: the profile's capacity)"
    )
    block_size: int = option(16, "tokens per KV block")
    max_running: int = option(256, "most requests generating at once")
    swap_space_bytes: int = option(
        0, "CPU memory for swapped KV, in bytes; 0: the profile's (sim), no Swap (vllm)"
    )
    dtype: str = option("auto", "vllm: weight and activation dtype (auto, float32, bfloat16, ...)")
    max_model_len: int = option(
        0, "longest context in tokens; 0 takes the model's (sim: the KV capacity)"
    )
    seed: int = option(0, "seed of sampling and of the sim engine's synthetic tokens")

    # The agent ----------------------------------------------------------------------------------
    scheduler_address: str = option(
        "127.0.0.1:50051",
        "the scheduler's WorkerGateway, host:port; replicas as ipv4:host:port,host:port (the "
        "worker connects to the one that leads)",
    )
    cluster_token: str = option(
        "", "bearer token the scheduler's WorkerGateway expects from workers", secret=True
    )
    worker_id: str = option(
        "", "this worker's id, unique among connected workers; empty: the host name (pod name)"
    )
    scheduler_tls: bool = option(False, "reach the scheduler over TLS")
    scheduler_ca_file: Path | None = option(
        None, "PEM CA bundle to verify the scheduler's certificate (implies TLS)"
    )
    scheduler_cert_file: Path | None = option(
        None, "PEM certificate this worker presents to the scheduler (mutual TLS)"
    )
    scheduler_key_file: Path | None = option(None, "PEM private key of --scheduler-cert-file")
    scheduler_server_name: str = option(
        "", "name expected in the scheduler's certificate, when not the address's host"
    )
    report_interval_seconds: float = option(
        0.5, "seconds between heartbeats until the scheduler says otherwise at registration"
    )
    reconnect_max_seconds: float = option(
        10.0, "longest wait between attempts to reach the scheduler (the backoff doubles to it)"
    )
    drain_seconds: float = option(
        30.0,
        "on SIGTERM (or the scheduler's Drain), seconds to finish held requests before handing "
        "the rest back to the scheduler",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine={self.engine!r} is not one of {', '.join(ENGINES)}")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ConfigError(f"--time-scale={self.time_scale} must be a number above 0")
        for name in ("block_size", "max_running"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)} must be at least 1")
        for name in ("kv_cache_bytes", "swap_space_bytes", "max_model_len"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_name(name)} must not be negative (0 takes the default)")
        for name in ("report_interval_seconds", "reconnect_max_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag_name(name)}={value} must be a number above 0")
        if not (self.drain_seconds >= 0 and math.isfinite(self.drain_seconds)):
            raise ConfigError(f"--drain-seconds={self.drain_seconds} must be a number >= 0")
        error = target_error(self.scheduler_address)
        if error is not None:
            raise ConfigError(f"--scheduler-address={self.scheduler_address!r} {error}")
        if (self.scheduler_cert_file is None) != (self.scheduler_key_file is None):
            raise ConfigError(
                "--scheduler-cert-file and --scheduler-key-file must be given together"
            )
        for name in ("scheduler_ca_file", "scheduler_cert_file", "scheduler_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag_name(name)}={path}: no such file")

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or _hostname()

    @property
    def scheduler_client_tls(self) -> ClientTls | None:
        """TLS settings of the channel to the scheduler; None for plaintext."""
        uses_tls = (
            self.scheduler_tls
            or self.scheduler_ca_file is not None
            or self.scheduler_cert_file is not None
        )
        if not uses_tls:
            return None
        return ClientTls(
            ca_file=self.scheduler_ca_file,
            cert_file=self.scheduler_cert_file,
            key_file=self.scheduler_key_file,
            server_name=self.scheduler_server_name or None,
        )
