"""`lamps worker serve` as a real process against the protocol harness: health follows
registration, metrics, and a drain on SIGTERM that loses no request."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import AsyncIterator

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.v1 import common_pb2
from lamps.v1 import scheduler_pb2 as pb
from tests.support.processes import ServiceProcess, StartService
from tests.worker.gateway import CLUSTER_TOKEN, LoopbackGateway, admit

TOOL = "emulated.math"
LONG = 1_000_000


@pytest.fixture
async def gateway() -> AsyncIterator[LoopbackGateway]:
    gateway = LoopbackGateway()
    await gateway.start()
    yield gateway
    await gateway.stop()


def start_worker(
    start_service: StartService, gateway: LoopbackGateway, *flags: str
) -> ServiceProcess:
    return start_service(
        [
            "worker",
            "--scheduler-address",
            gateway.target,
            "--worker-id",
            "worker-1",
            "--time-scale",
            "20",
            "--reconnect-max-seconds",
            "0.2",
            *flags,
        ],
        env={"LAMPS_CLUSTER_TOKEN": CLUSTER_TOKEN},
    )


async def health(worker: ServiceProcess) -> int:
    async with aio.insecure_channel(worker.target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(response.status)


async def stop(worker: ServiceProcess) -> int:
    """SIGTERM and wait without blocking the loop the harness answers on."""
    return await asyncio.to_thread(worker.terminate)


def scrape(worker: ServiceProcess) -> str:
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_health_says_serving_only_once_registered(
    gateway: LoopbackGateway, start_service: StartService
) -> None:
    await gateway.stop()  # the scheduler is not up yet
    worker = start_worker(start_service, gateway)
    assert await health(worker) == health_pb2.HealthCheckResponse.NOT_SERVING
    await gateway.start()
    connection = await gateway.connection()
    assert connection.register.worker_id == "worker-1"
    for _ in range(500):
        if await health(worker) == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.02)
    assert await health(worker) == health_pb2.HealthCheckResponse.SERVING
    assert any(r["msg"] == "registered" for r in worker.records())
    assert await stop(worker) == 0


async def test_sigterm_drains_finishing_what_it_can_and_handing_back_the_rest(
    gateway: LoopbackGateway, start_service: StartService
) -> None:
    worker = start_worker(start_service, gateway, "--drain-seconds", "1.5")
    connection = await gateway.connection()
    await connection.send(admit=admit("short", [(5, "")]))
    await connection.send(admit=admit("in-tool", [(5, TOOL), (5, "")]))
    for rid in ("long-1", "long-2"):
        await connection.send(admit=admit(rid, [(LONG, "")]))
    await gateway.wait(
        lambda: (
            gateway.ended("short")
            and bool(gateway.updates("in-tool", "intercepted"))
            and all(gateway.updates(rid, "tokens") for rid in ("long-1", "long-2"))
        )
    )
    metrics = scrape(worker)
    assert "lamps_worker_held_requests 3.0" in metrics
    assert "lamps_worker_connected 1.0" in metrics
    assert "lamps_worker_generated_tokens_total" in metrics

    worker.proc.send_signal(signal.SIGTERM)
    await gateway.wait(lambda: any(r.draining for r in connection.reports))
    # Admissions are refused from now on; a tool's answer is still taken.
    await connection.send(admit=admit("late", [(5, "")]))
    await connection.send(resume=pb.Resume(request_id="in-tool", append_tokens=3))
    assert await asyncio.to_thread(worker.proc.wait, 60) == 0
    await asyncio.wait_for(connection.closed.wait(), 10)

    # Nothing lost: each request ended once, with every token it generated.
    assert gateway.distinct("short", "completed")
    (completed,) = gateway.distinct("in-tool", "completed")
    assert completed.completed.completion_tokens == len(gateway.tokens("in-tool")) == 10
    for rid in ("long-1", "long-2"):
        (released,) = gateway.distinct(rid, "released")
        assert released.released.reason == pb.RELEASE_REASON_DRAINED
        assert released.released.generated_tokens == len(gateway.tokens(rid)) > 0
        assert not gateway.distinct(rid, "completed")
    (refusal,) = gateway.refusals("late")
    assert "draining" in refusal.message
    assert connection.reports[-1].draining
    assert connection.reports[-1].kv.free_blocks == connection.reports[-1].kv.total_blocks
    messages = [r["msg"] for r in worker.records()]
    assert messages.index("draining") < messages.index("drained") < messages.index("stopped")


async def test_a_bad_engine_setting_stops_the_worker_with_a_clear_error(
    start_service: StartService,
) -> None:
    worker = start_service(["worker", "--profile", "tpu-v9"], wait=False)
    assert await asyncio.to_thread(worker.proc.wait, 30) == 1
    errors = [r["msg"] for r in worker.records() if r["level"] == "ERROR"]
    assert any("unknown cost profile 'tpu-v9'" in m for m in errors), errors
    assert "Traceback" not in worker.log_path.read_text()


async def test_strategies_reach_the_register_of_a_served_worker(
    gateway: LoopbackGateway, start_service: StartService
) -> None:
    worker = start_worker(
        start_service, gateway, "--block-size", "32", "--kv-cache-bytes", str(458_752 * 3200)
    )
    register = (await gateway.connection()).register
    assert register.kv.block_size == 32
    assert register.kv.total_blocks == 100
    assert common_pb2.STRATEGY_SWAP in register.strategies
    assert await stop(worker) == 0


async def test_a_drain_while_the_scheduler_is_away_is_delivered_when_it_returns(
    gateway: LoopbackGateway, start_service: StartService
) -> None:
    worker = start_worker(start_service, gateway, "--drain-seconds", "0.2")
    connection = await gateway.connection()
    await connection.send(admit=admit("held", [(LONG, "")]))
    await gateway.wait(lambda: bool(gateway.updates("held", "tokens")))
    await gateway.stop()
    worker.proc.send_signal(signal.SIGTERM)
    # The worker hands the request back while nobody listens, then waits to say so.
    for _ in range(500):
        if any(r["msg"] == "drained" for r in worker.records()):
            break
        await asyncio.sleep(0.02)
    assert worker.proc.poll() is None
    await gateway.start()
    again = await gateway.connection(1)
    # It claims the request whose hand-back it is about to deliver, so the scheduler waits for
    # that instead of re-queueing it blind.
    assert list(again.register.held_request_ids) == ["held"]
    assert await asyncio.to_thread(worker.proc.wait, 60) == 0
    (released,) = gateway.distinct("held", "released")
    assert released.released.reason == pb.RELEASE_REASON_DRAINED
    assert released.released.generated_tokens == len(gateway.tokens("held"))
    assert any(r.draining for r in again.reports)
