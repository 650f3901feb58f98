"""The worker's configuration: names the vllm engine and the chart rely on, and refusals."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lamps.common.config import ConfigError, load, redacted
from lamps.worker.config import WorkerConfig


def test_defaults_and_environment_names() -> None:
    config = load(
        WorkerConfig,
        environ={
            "LAMPS_ENGINE": "vllm",
            "LAMPS_MODEL": "/models/smollm2",
            "LAMPS_TIME_SCALE": "10",
            "LAMPS_KV_CACHE_BYTES": "33554432",
            "LAMPS_SCHEDULER_ADDRESS": "scheduler.lamps:50051",
            "LAMPS_CLUSTER_TOKEN": "s3cret",
            "LAMPS_DRAIN_SECONDS": "120",
        },
    )
    assert (config.engine, config.model, config.time_scale) == ("vllm", "/models/smollm2", 10.0)
    assert (config.kv_cache_bytes, config.block_size, config.max_running) == (33554432, 16, 256)
    assert (config.profile, config.dtype, config.max_model_len, config.seed) == (
        "gptj-6b-a100",
        "auto",
        0,
        0,
    )
    assert config.scheduler_address == "scheduler.lamps:50051"
    assert config.drain_seconds == 120.0
    assert redacted(config)["cluster_token"] == "<redacted>"
    assert config.scheduler_client_tls is None
    assert WorkerConfig().resolved_worker_id == socket.gethostname()
    assert WorkerConfig(worker_id="pod-7").resolved_worker_id == "pod-7"


def test_scheduler_replicas_are_given_as_several_addresses() -> None:
    replicas = "ipv4:127.0.0.1:50051,127.0.0.1:50061"
    assert WorkerConfig(scheduler_address=replicas).scheduler_address == replicas


def test_tls_to_the_scheduler_is_on_when_asked_or_given_a_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert WorkerConfig(scheduler_tls=True).scheduler_client_tls is not None
    tls = WorkerConfig(scheduler_ca_file=ca, scheduler_server_name="sched").scheduler_client_tls
    assert tls is not None
    assert (tls.ca_file, tls.server_name) == (ca, "sched")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "tpu"}, "--engine='tpu' is not one of sim, vllm"),
        ({"time_scale": 0.0}, "--time-scale=0.0 must be a number above 0"),
        ({"time_scale": float("inf")}, "--time-scale=inf"),
        ({"block_size": 0}, "--block-size must be at least 1"),
        ({"max_running": 0}, "--max-running must be at least 1"),
        ({"kv_cache_bytes": -1}, "--kv-cache-bytes must not be negative"),
        ({"report_interval_seconds": 0.0}, "--report-interval-seconds=0.0 must be"),
        ({"drain_seconds": -1.0}, "--drain-seconds=-1.0 must be a number >= 0"),
        ({"scheduler_address": "scheduler"}, "--scheduler-address='scheduler' is not host:port"),
        ({"scheduler_address": "ipv4:127.0.0.1:1,127.0.0.1"}, "nor several addresses as ipv4:"),
        ({"scheduler_cert_file": Path("/x")}, "must be given together"),
        ({"scheduler_ca_file": Path("/no/such.pem")}, "--scheduler-ca-file=/no/such.pem: no such"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        WorkerConfig(**settings)  # type: ignore[arg-type]
