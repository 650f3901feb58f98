"""The scheduler's configuration: every flag has a LAMPS_* variable and bad values fail at start."""

from __future__ import annotations

import pytest

from lamps.common.config import ConfigError, load
from lamps.scheduler.config import SchedulerConfig


def from_env(**variables: str) -> SchedulerConfig:
    return load(SchedulerConfig, None, {f"LAMPS_{k.upper()}": v for k, v in variables.items()})


def test_defaults_and_environment() -> None:
    config = from_env(
        redis_url="redis://redis:6379/0",
        policy="fcfs",
        predictor_address="predictor:50053",
        tool_runner_address="tools:50054",
        replica_id="scheduler-0",
        leader_lease_seconds="5",
        worker_lease_seconds="8",
        report_interval_seconds="0.5",
        starvation_threshold="50",
    )
    assert config.redis_url == "redis://redis:6379/0"
    assert config.policy == "fcfs"
    assert (config.leader_lease_seconds, config.worker_lease_seconds) == (5.0, 8.0)
    assert config.starvation_threshold == 50
    assert from_env().policy == "lamps"


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"policy": "fastest"}, "known policies: fcfs, infercept, sjf, lamps, oracle-lamps"),
        ({"cost_profile": "gpt-5"}, "--cost-profile='gpt-5' is unknown"),
        ({"starvation_threshold": "0"}, "--starvation-threshold must be at least 1"),
        ({"worker_lease_seconds": "-1"}, "--worker-lease-seconds=-1.0 must be a positive"),
        ({"leader_lease_seconds": "0"}, "--leader-lease-seconds=0.0 must be a positive"),
        ({"max_prompt_chars": "0"}, "--max-prompt-chars must be at least 1"),
        ({"max_tokens_limit": "-5"}, "--max-tokens-limit must be at least 1"),
        (
            {"report_interval_seconds": "5", "worker_lease_seconds": "2"},
            "shorter than --worker-lease-seconds",
        ),
        ({"redis_url": "http://redis"}, "--redis-url must start with redis://"),
        ({"client_tls_cert_file": "/no/such.pem"}, "go together"),
        ({"predictor_timeout_seconds": "nan"}, "must be a positive number"),
    ],
)
def test_bad_values_fail_with_the_flag_named(variables: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_env(**variables)
    assert words in str(caught.value)
