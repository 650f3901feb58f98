"""The SDK and `lamps status` over TLS, with a certificate authority made for the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lamps.cli.main import main
from lamps.client import TLS, AsyncClient, Client, ReplaySegment, RequestState, Unavailable
from tests.support.certs import TestCA
from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_system(
    ca: TestCA, redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    with running_system(
        tmp_path_factory.mktemp("tls"),
        redis_process.url,
        tls=ca.issue("scheduler", server=True),
        ca_file=ca.pair.cert,
    ) as running:
        yield running


def test_a_client_trusting_the_ca_runs_a_generation_over_tls(
    tls_system: LocalSystem, ca: TestCA
) -> None:
    tls = TLS(ca_file=ca.pair.cert)
    with Client(f"localhost:{tls_system.port}", token=CLIENT_TOKEN, tls=tls) as client:
        result = client.complete("secure", replay=[ReplaySegment(8)])
    assert result.state is RequestState.FINISHED
    assert len(result.token_ids) == 8


async def test_the_async_client_checks_the_name_given_for_the_certificate(
    tls_system: LocalSystem, ca: TestCA
) -> None:
    tls = TLS(ca_file=str(ca.pair.cert), server_name="localhost")
    async with AsyncClient(tls_system.target, token=CLIENT_TOKEN, tls=tls) as client:
        status = await client.cluster_status()
    assert [w.worker_id for w in status.workers] == ["w1"]
    wrong = TLS(ca_file=ca.pair.cert, server_name="elsewhere.example")
    async with AsyncClient(tls_system.target, token=CLIENT_TOKEN, tls=wrong) as client:
        with pytest.raises(Unavailable):
            await client.cluster_status()


def test_a_plaintext_client_cannot_talk_to_a_tls_scheduler(tls_system: LocalSystem) -> None:
    with (
        Client(tls_system.target, token=CLIENT_TOKEN, timeout_s=5) as client,
        pytest.raises(Unavailable),
    ):
        client.cluster_status()


def test_status_over_tls_from_the_environment(
    tls_system: LocalSystem,
    ca: TestCA,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAMPS_TLS_CA_FILE", str(ca.pair.cert))
    monkeypatch.setenv("LAMPS_TOKEN", CLIENT_TOKEN)
    assert main(["status", "--address", f"localhost:{tls_system.port}"]) == 0
    assert "w1" in capsys.readouterr().out


def test_from_env_reads_the_address_token_and_tls_files(
    tls_system: LocalSystem, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMPS_ADDRESS", f"localhost:{tls_system.port}")
    monkeypatch.setenv("LAMPS_TOKEN", CLIENT_TOKEN)
    monkeypatch.setenv("LAMPS_TLS_CA_FILE", str(ca.pair.cert))
    with Client.from_env() as client:
        assert client.cluster_status().workers
