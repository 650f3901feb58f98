"""Configuration from flags, `LAMPS_*` variables and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from lamps.common import config as cfg
from lamps.common.tenants import TokenEntry, parse_entries
from lamps.scheduler.config import SchedulerConfig
from tests.support.processes import lamps_command


def parse_flags(cls: type[cfg.ServerConfig], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, cls)
    return parser.parse_args(argv)


def test_flag_beats_environment_which_beats_default() -> None:
    env = {"LAMPS_PORT": "6000", "LAMPS_GRACE_SECONDS": "2.5"}
    config = cfg.load(SchedulerConfig, parse_flags(SchedulerConfig, ["--port", "7000"]), env)
    assert config.port == 7000
    assert config.grace_seconds == 2.5
    assert config.metrics_port == 9401  # the scheduler's own default, not the base class's


def test_environment_values_are_parsed_by_field_type(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    key = tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    env = {
        "LAMPS_AUTH_TOKENS": "alpha, beta,,",
        "LAMPS_LOG_FORMAT": "TEXT",
        "LAMPS_TLS_CERT_FILE": str(cert),
        "LAMPS_TLS_KEY_FILE": str(key),
    }
    config = cfg.load(SchedulerConfig, None, env)
    assert config.auth_tokens == ("alpha", "beta")
    assert config.log_format is cfg.LogFormat.TEXT
    assert config.tls_cert_file == cert
    assert config.tls_enabled


def test_bool_flags_and_variables() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithBool:
        verbose: bool = cfg.option(False, "talk more")

    assert cfg.load(WithBool, None, {"LAMPS_VERBOSE": "yes"}).verbose is True
    flags = parse_flags(WithBool, ["--no-verbose"])  # type: ignore[arg-type]
    assert cfg.load(WithBool, flags, {"LAMPS_VERBOSE": "1"}).verbose is False
    with pytest.raises(cfg.ConfigError, match="LAMPS_VERBOSE='maybe' is not true or false"):
        cfg.load(WithBool, None, {"LAMPS_VERBOSE": "maybe"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LAMPS_PORT": "fifty"}, "LAMPS_PORT='fifty' is not an integer"),
        ({"LAMPS_PORT": "70000"}, "--port=70000 is not a port"),
        ({"LAMPS_GRACE_SECONDS": "-1"}, "--grace-seconds must not be negative"),
        ({"LAMPS_LOG_FORMAT": "xml"}, "LAMPS_LOG_FORMAT='xml' is not one of json, text"),
        ({"LAMPS_LOG_LEVEL": "LOUD"}, "--log-level='LOUD'"),
        ({"LAMPS_TLS_CERT_FILE": "/nonexistent.pem"}, "must be given together"),
        (
            {"LAMPS_TLS_CERT_FILE": "/nonexistent.pem", "LAMPS_TLS_KEY_FILE": "/nonexistent.key"},
            "--tls-cert-file=/nonexistent.pem: no such file",
        ),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=re.escape(message)):
        cfg.load(SchedulerConfig, None, env)


def test_redacted_hides_secrets_only() -> None:
    config = SchedulerConfig(auth_tokens=("s3cret",), cluster_tokens=())
    shown = cfg.redacted(config)
    assert shown["auth_tokens"] == "<redacted>"
    assert shown["cluster_tokens"] == ()
    assert shown["port"] == 50051
    assert "s3cret" not in repr(shown)


def test_mutable_defaults_are_refused() -> None:
    with pytest.raises(TypeError, match="mutable defaults"):
        cfg.option([], "a list")


def test_cli_reports_a_bad_flag_and_exits_2() -> None:
    result = subprocess.run(
        lamps_command("tool-runner", "serve", "--port", "abc"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--port='abc' is not an integer" in result.stderr


def test_token_flags_repeat_and_name_tenants(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# tenants of the staging cluster\ncarol=carol-tok\n\nshared-b\n")
    flags = ["--auth-tokens", "alice=tok1", "--auth-tokens", "bob=tok2,shared-a"]
    flags += ["--auth-tokens-file", str(tokens_file)]
    config = cfg.load(SchedulerConfig, parse_flags(SchedulerConfig, flags), {})
    entries = parse_entries(config.client_tokens())
    assert [(e.tenant, e.token) for e in entries] == [
        ("alice", "tok1"),
        ("bob", "tok2"),
        ("", "shared-a"),
        ("carol", "carol-tok"),
        ("", "shared-b"),
    ]


@pytest.mark.parametrize(
    ("entry", "tenant", "token"),
    [
        ("alice=s3cret", "alice", "s3cret"),
        ("plain-token", "", "plain-token"),
        ("Zm9vYmE=", "", "Zm9vYmE="),  # base64 padding is not a tenant
        ("Zm9vYg==", "", "Zm9vYg=="),
        ("=token", "", "=token"),
        ("team.a-1=x=y", "team.a-1", "x=y"),
    ],
)
def test_token_entries_name_a_tenant_only_before_a_plain_equals_sign(
    entry: str, tenant: str, token: str
) -> None:
    assert TokenEntry.parse(entry) == TokenEntry(token=token, tenant=tenant)


def test_one_token_for_two_tenants_is_refused_at_start_up() -> None:
    with pytest.raises(cfg.ConfigError, match="one token is given to two tenants"):
        cfg.load(SchedulerConfig, None, {"LAMPS_AUTH_TOKENS": "alice=same,bob=same"})
