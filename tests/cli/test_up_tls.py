"""`lamps up --tls`: every part serves TLS with a certificate of a CA made for the run, the parts
trust it among themselves, and the settings printed for clients are all a user needs."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lamps.client import TLS, Client, ReplaySegment, RequestState
from lamps.common.channel import ClientTls
from tests.support.lamps_up import LampsUp, lamps_up, leading_scheduler
from tests.support.processes import REPO_ROOT, lamps_command
from tests.support.raw_client import RawClient

TOKEN = "tls-test-token"
CLI_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("tls")
    args = ("--port", "0", "--tls", "--schedulers", "2", "--time-scale", "20", "--token", TOKEN)
    with lamps_up(directory, *args) as running:
        yield running
        # Replicas and TLS change nothing in the way down: every part drains and stops.
        assert running.stop() == 0, running.stderr


def ca_file(system: LampsUp) -> Path:
    return Path(system.endpoints()["client_env"]["LAMPS_TLS_CA_FILE"])


def lamps(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`lamps ARGS` as a process with only `env`'s LAMPS_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    return subprocess.run(
        lamps_command(*args),
        capture_output=True,
        text=True,
        env=clean | env,
        cwd=REPO_ROOT,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_the_ca_and_certificate_are_made_in_the_state_directory(system: LampsUp) -> None:
    endpoints = system.endpoints()
    assert endpoints["tls"] is True
    assert ca_file(system).parent == (system.state_dir / "tls").resolve()
    for key in (system.state_dir / "tls").glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0  # private keys readable by their owner only
    assert any(line.strip().startswith("clients     export") for line in system.banner)


async def test_a_plaintext_client_is_refused(system: LampsUp) -> None:
    for name in system.schedulers():
        async with RawClient(system.part(name)["address"], TOKEN) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                await plaintext.status()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_completes_a_request_with_a_tool_call(system: LampsUp) -> None:
    script = [ReplaySegment(12, "emulated.math", 1.0, 4), ReplaySegment(6)]
    tls = TLS(ca_file=ca_file(system))
    with Client(system.target, token=TOKEN, tls=tls, timeout_s=30) as client:
        result = client.complete("2+3?", replay=script)
    assert result.state is RequestState.FINISHED, result.error_message
    assert result.usage.completion_tokens == 18
    (call,) = result.tool_calls
    assert call.result is not None
    assert call.result.error is None


async def test_the_leader_is_found_over_tls(system: LampsUp) -> None:
    assert await leading_scheduler(system, ClientTls(ca_file=ca_file(system))) == "scheduler-0"


def test_lamps_status_works_with_the_printed_variables(system: LampsUp) -> None:
    env = system.endpoints()["client_env"] | {"LAMPS_TOKEN": TOKEN}
    run = lamps(["status"], env)
    assert run.returncode == 0, run.stderr
    assert "worker-0" in run.stdout


def test_lamps_generate_works_with_the_printed_flags(system: LampsUp) -> None:
    (tried,) = [line for line in system.banner if line.strip().startswith("try")]
    command = shlex.split(tried.strip().removeprefix("try").replace("$TOKEN", TOKEN))
    assert command[:2] == ["lamps", "generate"]
    run = lamps([*command[1:], "--max-tokens", "24"], {})
    assert run.returncode == 0, run.stderr
    assert "finished" in run.stderr.splitlines()[-1]
