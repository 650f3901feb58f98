"""Every service boots through `lamps.common.serve`: tested as real processes on loopback."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lamps.common.channel import ClientTls, open_channel
from lamps.v1 import (
    predictor_pb2,
    predictor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    tool_runner_pb2,
    tool_runner_pb2_grpc,
)
from tests.support.certs import TestCA
from tests.support.processes import ServiceProcess, StartService, loopback_serve_args
from tests.support.slow_server import sleep_method

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICES = {
    "scheduler": ["lamps.v1.SchedulerService", "lamps.v1.WorkerGatewayService"],
    "worker": [],
    "predictor": ["lamps.v1.PredictorService"],
    "tool-runner": ["lamps.v1.ToolRunnerService"],
}
STANDARD = ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
# A worker says SERVING once registered with a scheduler (tests/worker); none runs here.
READY_AT_START = {"scheduler": SERVING, "worker": NOT_SERVING, "predictor": SERVING}
# What an empty call of each service's first RPC gets once it reaches the servicer.
REACHED = {
    "scheduler": grpc.StatusCode.INVALID_ARGUMENT,
    "predictor": grpc.StatusCode.INVALID_ARGUMENT,
    "tool-runner": grpc.StatusCode.OK,
}


async def health_status(channel: aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def listed_services(channel: aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        return sorted(s.name for s in response.list_services_response.service)
    raise AssertionError("reflection sent no answer")


async def call_first_rpc(service: str, channel: aio.Channel, token: str | None = None) -> None:
    """One call of the service's API, which must get through to the servicer."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if service == "scheduler":
        await scheduler_pb2_grpc.SchedulerServiceStub(channel).Submit(
            scheduler_pb2.SubmitRequest(), metadata=metadata, timeout=5
        )
    elif service == "predictor":
        await predictor_pb2_grpc.PredictorServiceStub(channel).Predict(
            predictor_pb2.PredictRequest(), metadata=metadata, timeout=5
        )
    else:
        await tool_runner_pb2_grpc.ToolRunnerServiceStub(channel).ListTools(
            tool_runner_pb2.ListToolsRequest(), metadata=metadata, timeout=5
        )


def scrape(service: ServiceProcess) -> str:
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_service_serves_health_reflection_and_metrics(
    name: str, start_service: StartService
) -> None:
    service = start_service([name])
    async with aio.insecure_channel(service.target) as channel:
        assert await health_status(channel) == READY_AT_START.get(name, SERVING)
        for full_name in SERVICES[name]:
            assert await health_status(channel, full_name) == SERVING
        assert await listed_services(channel) == sorted(SERVICES[name] + STANDARD)
        if SERVICES[name] and REACHED[name] != grpc.StatusCode.OK:
            with pytest.raises(aio.AioRpcError) as caught:
                await call_first_rpc(name, channel)
            assert caught.value.code() == REACHED[name]
            if REACHED[name] == grpc.StatusCode.UNIMPLEMENTED:
                assert "not available in this release" in (caught.value.details() or "")
    metrics = scrape(service)
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Check"' in metrics
    assert "process_cpu_seconds_total" in metrics
    build_info = [line for line in metrics.splitlines() if line.startswith("lamps_build_info{")]
    assert len(build_info) == 1
    assert f'service="{name}"' in build_info[0]
    assert service.terminate() == 0
    # The server's own records: access logs of streams the client closed may land on either
    # side of the drain, and a worker's agent logs its own drain in between.
    lifecycle = [r["msg"] for r in service.records() if r["logger"] == "lamps.server"]
    assert lifecycle[-2:] == ["draining", "stopped"]


async def test_unknown_health_service_is_not_found(start_service: StartService) -> None:
    service = start_service(["predictor"])
    async with aio.insecure_channel(service.target) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await health_status(channel, "lamps.v1.NoSuchService")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bearer_tokens_guard_each_service(start_service: StartService) -> None:
    service = start_service(
        ["scheduler"],
        env={"LAMPS_AUTH_TOKENS": "client-a,client-b", "LAMPS_CLUSTER_TOKENS": "cluster"},
    )
    async with aio.insecure_channel(service.target) as channel:
        # Probes carry no secrets: health and reflection stay open.
        assert await health_status(channel) == SERVING
        assert "lamps.v1.SchedulerService" in await listed_services(channel)

        for token, expected in [
            (None, "missing bearer token"),
            ("wrong", "invalid bearer token"),
            ("cluster", "invalid bearer token"),  # the cluster token is not a client token
        ]:
            with pytest.raises(aio.AioRpcError) as caught:
                await call_first_rpc("scheduler", channel, token)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert expected in (caught.value.details() or "")

        for token in ("client-a", "client-b"):
            with pytest.raises(aio.AioRpcError) as caught:
                await call_first_rpc("scheduler", channel, token)
            assert caught.value.code() == REACHED["scheduler"]

        gateway = scheduler_pb2_grpc.WorkerGatewayServiceStub(channel)
        for token, code in [
            ("client-a", grpc.StatusCode.UNAUTHENTICATED),
            # An empty first message reaches the gateway, which wants a Register first.
            ("cluster", grpc.StatusCode.FAILED_PRECONDITION),
        ]:
            call = gateway.Connect(
                iter([scheduler_pb2.ConnectRequest()]),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=5,
            )
            with pytest.raises(aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == code
    assert "UNAUTHENTICATED" in scrape(service)


@pytest.mark.parametrize("name", ["predictor", "tool-runner"])
async def test_internal_services_take_the_token_open_channel_sends(
    name: str, start_service: StartService
) -> None:
    service = start_service([name], env={"LAMPS_AUTH_TOKENS": "t0k3n"})
    for token, expected in [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("t0k3n-", grpc.StatusCode.UNAUTHENTICATED),
        ("t0k3n", REACHED[name]),
    ]:
        async with open_channel(service.target, token=token) as channel:
            try:
                await call_first_rpc(name, channel)
                code = grpc.StatusCode.OK
            except aio.AioRpcError as exc:
                code = exc.code()
        assert code == expected, token


async def test_request_id_is_echoed_and_logged(start_service: StartService) -> None:
    # Successful calls are logged at DEBUG.
    service = start_service(["tool-runner", "--log-level", "DEBUG"])
    async with aio.insecure_channel(service.target) as channel:
        stub = tool_runner_pb2_grpc.ToolRunnerServiceStub(channel)
        call = stub.ListTools(
            tool_runner_pb2.ListToolsRequest(), metadata=(("x-request-id", "req-42"),), timeout=5
        )
        await call
        assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
        # Without one, the server makes one up and still says which.
        call = stub.ListTools(tool_runner_pb2.ListToolsRequest(), timeout=5)
        await call
        generated = dict(await call.trailing_metadata())["x-request-id"]
        assert len(generated) == 32
        # A hostile, huge id is cut before it reaches the logs.
        call = stub.ListTools(
            tool_runner_pb2.ListToolsRequest(), metadata=(("x-request-id", "x" * 4000),), timeout=5
        )
        await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "x" * 128
    logged = {r.get("request_id") for r in service.records() if r.get("logger") == "lamps.rpc"}
    assert {"req-42", generated} <= logged


def slow_server_args(*extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.slow_server", *loopback_serve_args("")[2:], *extra]


async def test_sigterm_lets_a_call_in_flight_finish_then_exits_0(
    start_process: StartService,
) -> None:
    service = start_process(slow_server_args("--grace-seconds", "10"))
    async with aio.insecure_channel(service.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="lamps.test.Slow")
        )
        assert (await watch.read()).status == SERVING
        in_flight = asyncio.ensure_future(sleep_method(channel)(b"1.5"))
        await asyncio.sleep(0.5)
        service.proc.send_signal(signal.SIGTERM)
        assert (await watch.read()).status == NOT_SERVING
        assert await in_flight == b"slept"
    assert await asyncio.to_thread(service.proc.wait, 30) == 0
    messages = [r["msg"] for r in service.records()]
    assert messages.index("draining") < messages.index("stopped")


async def test_calls_past_the_grace_period_are_cancelled_and_the_process_still_exits_0(
    start_process: StartService,
) -> None:
    service = start_process(slow_server_args("--grace-seconds", "0.5"))
    async with aio.insecure_channel(service.target) as channel:
        in_flight = asyncio.ensure_future(sleep_method(channel)(b"60"))
        await asyncio.sleep(0.5)
        service.proc.send_signal(signal.SIGTERM)
        with pytest.raises(aio.AioRpcError) as caught:
            await in_flight
    assert caught.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
    assert await asyncio.to_thread(service.proc.wait, 30) == 0


async def test_a_second_signal_cuts_the_drain_short(start_process: StartService) -> None:
    service = start_process(slow_server_args("--grace-seconds", "600"))
    async with aio.insecure_channel(service.target) as channel:
        in_flight = asyncio.ensure_future(sleep_method(channel)(b"600"))
        await asyncio.sleep(0.5)
        service.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        service.proc.send_signal(signal.SIGINT)
        with pytest.raises(aio.AioRpcError):
            await in_flight
    # Well inside the 600 s grace: the second signal ended the wait.
    assert await asyncio.to_thread(service.proc.wait, 30) == 0
    assert any("second signal" in r["msg"] for r in service.records())


async def test_tls_serves_only_tls(start_service: StartService, tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("server", server=True)
    service = start_service(
        ["predictor"],
        env={"LAMPS_TLS_CERT_FILE": str(server.cert), "LAMPS_TLS_KEY_FILE": str(server.key)},
    )
    target = f"localhost:{service.port}"
    async with open_channel(target, tls=ClientTls(ca_file=ca.pair.cert)) as channel:
        assert await health_status(channel) == SERVING
    async with aio.insecure_channel(target) as plaintext:
        with pytest.raises(aio.AioRpcError) as caught:
            await health_status(plaintext)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(
    start_service: StartService, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("server", server=True)
    client = ca.issue("client", server=False)
    service = start_service(
        ["tool-runner"],
        env={
            "LAMPS_TLS_CERT_FILE": str(server.cert),
            "LAMPS_TLS_KEY_FILE": str(server.key),
            "LAMPS_TLS_CLIENT_CA_FILE": str(ca.pair.cert),
        },
    )
    target = f"localhost:{service.port}"
    with_cert = ClientTls(ca_file=ca.pair.cert, cert_file=client.cert, key_file=client.key)
    async with open_channel(target, tls=with_cert) as channel:
        assert await health_status(channel) == SERVING
    async with open_channel(target, tls=ClientTls(ca_file=ca.pair.cert)) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await health_status(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_port_in_use_is_a_clear_error(start_service: StartService) -> None:
    first = start_service(["worker"])
    second = start_service(["worker", "--port", str(first.port)], wait=False)
    assert await asyncio.to_thread(second.proc.wait, 30) == 1
    errors = [r["msg"] for r in second.records() if r["level"] == "ERROR"]
    assert any(f"cannot listen on 127.0.0.1:{first.port}" in m for m in errors), errors
    assert "Traceback" not in second.log_path.read_text()


async def test_a_metrics_port_in_use_is_a_clear_error(start_service: StartService) -> None:
    first = start_service(["worker"])
    second = start_service(["worker", "--metrics-port", str(first.metrics_port)], wait=False)
    assert await asyncio.to_thread(second.proc.wait, 30) == 1
    errors = [r["msg"] for r in second.records() if r["level"] == "ERROR"]
    assert any(f"cannot serve metrics on 127.0.0.1:{first.metrics_port}" in m for m in errors)
    assert "Traceback" not in second.log_path.read_text()
